"""RETRIEVAL_FINE_TUNE=top through the product (issue #14): the whole recipe on the trained
catalogue (300 real garments; one tiny epoch of the top), the tuned backbone as a versioned
artefact with cache rows of its own, its faults, and its activation while searches run."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from django.conf import settings
from django.db import connection

from retrieval import features, search, training
from retrieval.models import (
    BackboneFeature,
    ExampleFeature,
    ExamplePhoto,
    FeatureModel,
    Garment,
    GarmentFeature,
)
from retrieval.spec import base_backbone, is_tuned, tuned_weights_file
from tests.catalogue_zips import examples_from_garments
from tests.training.test_example_training import senders_with_role


def train_tuned(**kwargs) -> tuple[FeatureModel, list[dict]]:
    states: list[dict] = []
    model = training.train_model(
        epochs=2,
        fine_tune="top",
        fine_tune_epochs=1,
        activate=False,
        progress=states.append,
        **kwargs,
    )
    return model, states


def remove_files(model: FeatureModel) -> None:
    model.head_path.unlink(missing_ok=True)
    if is_tuned(model.backbone):
        (settings.RETRIEVAL_MODELS_DIR / tuned_weights_file(model.backbone)).unlink(missing_ok=True)


def garment_images(n: int) -> list[tuple[int, bytes]]:
    out = []
    for garment in Garment.objects.filter(status=Garment.Status.READY).order_by("id")[:n]:
        with garment.image.open("rb") as handle:
            out.append((garment.pk, handle.read()))
    return out


@pytest.mark.slow
@pytest.mark.django_db
def test_fine_tuning_the_top_makes_a_backbone_version_of_its_own(trained_catalogue, tmp_path):
    """The whole recipe: frozen head, one CNN pass to block 14, the top trained with per-epoch
    progress, the tuned weights saved with their checksum, the tuned backbone's cache rows
    (garments and training example photos) apart from the frozen one's, vectors; the old
    model keeps serving (not activated); the tuned file reloads to the same network."""
    garments = list(Garment.objects.filter(pk__in=trained_catalogue.ids[Garment]).order_by("sku"))
    (sender,) = senders_with_role(ExamplePhoto.Role.TRAIN, 1, holdout=0.5)
    from retrieval import catalogue

    catalogue.import_example_photos(
        source=examples_from_garments(
            tmp_path / "examples.zip", [("t1", garments[0], sender), ("t2", garments[1], sender)]
        ),
        holdout=0.5,
    )
    active = FeatureModel.objects.get(active=True)
    base = active.backbone
    frozen_rows = dict(
        BackboneFeature.objects.filter(backbone=base).values_list("garment_id", "created_at")
    )

    # A killed fine-tuning's activations (its worker never deleted them) go at the next one.
    stale = settings.RETRIEVAL_MODELS_DIR / "tmp" / "killed-model.taps.npy"
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_bytes(b"\0" * 1024)

    model, states = train_tuned()
    try:
        key = model.backbone
        assert not stale.exists()
        assert is_tuned(key) and base_backbone(key) == base and len(key) <= 40
        assert model.status == FeatureModel.Status.READY
        assert FeatureModel.objects.get(active=True) == active  # still serving the old one
        # Progress: the activation pass, then one line per epoch of the top (as train_head's).
        stages = [s["stage"] for s in states]
        assert stages.index("training") < stages.index("activations") < stages.index("fine_tuning")
        epochs = [s for s in states if s["stage"] == "fine_tuning"]
        assert [s["epoch"] for s in epochs] == [1] and "val_accuracy" in epochs[0]
        tuned = model.metrics["fine_tune"]
        assert tuned["epochs"] == 1 and tuned["best_epoch"] == 1 and tuned["examples_used"] == 2
        assert model.metrics["val_accuracy"] == tuned["val_accuracy"]
        # The temporary activations are gone; the weights are a checked, versioned file.
        assert not list((settings.RETRIEVAL_MODELS_DIR / "tmp").iterdir())
        path = settings.RETRIEVAL_MODELS_DIR / tuned_weights_file(key)
        payload = features.load_tuned_state(key=key, path=path)
        assert payload["sha256"] == tuned["sha256"] and payload["start"] == 15

        # Cache rows per backbone version: the frozen ones untouched, the tuned ones apart.
        assert (
            dict(
                BackboneFeature.objects.filter(backbone=base).values_list(
                    "garment_id", "created_at"
                )
            )
            == frozen_rows
        )
        tuned_rows = {r.garment_id: r for r in BackboneFeature.objects.filter(backbone=key)}
        assert set(tuned_rows) == set(frozen_rows)
        assert set(
            ExampleFeature.objects.filter(backbone=key).values_list("photo__key", flat=True)
        ) == {"t1", "t2"}
        assert GarmentFeature.objects.filter(model=model).count() == len(frozen_rows)

        # The tuned network, built from the file as searches build it, gives what was stored
        # (stored from float16 activations: equal to their rounding) and differs from the
        # frozen backbone.
        images = garment_images(4)
        extractor = features.extractor_for(backbone=key, model=model)
        assert extractor.backbone_name == key and extractor.frozen  # the frozen graph works
        out = extractor.extract([data for _, data in images])
        stored = np.stack([np.asarray(tuned_rows[gid].pooled) for gid, _ in images])
        frozen = np.stack(
            [
                np.asarray(BackboneFeature.objects.get(garment_id=gid, backbone=base).pooled)
                for gid, _ in images
            ]
        )
        scale = np.abs(stored).max()
        assert np.abs(out["pooled"] - stored).max() < 2e-3 * scale
        assert np.abs(out["pooled"] - frozen).max() > 1e-2 * scale
        # Reloaded from the file, again: identical outputs, eager or frozen graph alike.
        again = features.FeatureExtractor(backbone=key, tuned_path=path, head=model.head_path)
        eager = features.FeatureExtractor(
            backbone=key, tuned_path=path, head=model.head_path, freeze=False
        )
        rgb = torch.from_numpy(np.stack([np.asarray(img) for img in _decoded(images)]))
        first, second = extractor.from_arrays(rgb), again.from_arrays(rgb)
        assert np.array_equal(first["pooled"], second["pooled"])
        assert np.array_equal(first["fused"], second["fused"])
        assert np.allclose(eager.from_arrays(rgb)["pooled"], first["pooled"], atol=1e-4)

        # Faults: a corrupt or missing weights file fails the model's activation with a
        # clear error; the old model keeps serving.
        state = torch.load(path, weights_only=True)
        state["state_dict"]["_conv_head.weight"][0, 0, 0, 0] += 1.0  # the checksum kept
        torch.save(state, path)
        with pytest.raises(features.TunedWeightsError, match="corrupt"):
            training.reindex_and_activate(model=model)
        model.refresh_from_db()
        assert model.status == FeatureModel.Status.FAILED and "corrupt" in model.error
        path.unlink()
        with pytest.raises(features.TunedWeightsError, match="missing"):
            training.reindex_and_activate(model=model)
        model.refresh_from_db()
        assert model.status == FeatureModel.Status.FAILED and "missing" in model.error
        assert FeatureModel.objects.get(active=True) == active
    finally:
        remove_files(model)


def _decoded(images: list[tuple[int, bytes]]):
    from retrieval.images import load_rgb224

    return [load_rgb224(data) for _, data in images]


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_activating_a_fine_tuned_model_while_searches_run(trained_catalogue):
    """Searches by photo run in another thread while a fine-tuned model is re-indexed and
    activated: they answer from the old model until the switch, then from the new one (never
    an error); garments whose tuned cache rows are missing go through the full tuned CNN."""
    old = FeatureModel.objects.get(active=True)
    new, _ = train_tuned()
    try:
        key = new.backbone
        dropped = list(
            BackboneFeature.objects.filter(backbone=key)
            .order_by("garment_id")
            .values_list("garment_id", flat=True)[:3]
        )
        BackboneFeature.objects.filter(backbone=key, garment_id__in=dropped).delete()
        GarmentFeature.objects.filter(model=new, garment_id__in=dropped).delete()
        photo = garment_images(1)[0][1]
        answers: list[str] = []
        errors: list[BaseException] = []
        stop = threading.Event()

        def shopper() -> None:
            try:
                while not stop.is_set():
                    answers.append(search.search_image(image=photo, top=5).model)
            except BaseException as exc:  # reported below
                errors.append(exc)
            finally:
                connection.close()

        thread = threading.Thread(target=shopper)
        thread.start()
        try:
            deadline = time.monotonic() + 120
            while not answers and time.monotonic() < deadline and not errors:
                time.sleep(0.05)
            training.reindex_and_activate(model=new)
            seen = len(answers)
            while len(answers) < seen + 2 and time.monotonic() < deadline + 120 and not errors:
                time.sleep(0.05)
        finally:
            stop.set()
            thread.join(120)
        assert not errors, errors
        # Old until the switch, then new: one change, never back.
        assert answers[0] == old.name and answers[-1] == new.name
        switch = answers.index(new.name)
        assert set(answers[:switch]) == {old.name} and set(answers[switch:]) == {new.name}
        new.refresh_from_db()
        assert new.active and new.status == FeatureModel.Status.READY
        assert BackboneFeature.objects.filter(backbone=key, garment_id__in=dropped).count() == 3
        ready = set(
            Garment.objects.filter(status=Garment.Status.READY).values_list("id", flat=True)
        )
        assert set(new.features.values_list("garment_id", flat=True)) == ready
        result = search.search_image(image=photo, top=5)
        assert result.model == new.name and len(result.hits) == 5
    finally:
        remove_files(new)
