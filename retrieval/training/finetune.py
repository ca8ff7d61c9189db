"""Fine-tuning the CNN's top for a model (RETRIEVAL_FINE_TUNE=top, issue #14).

After the head is trained on the frozen features (:func:`retrieval.training.training._fit_head`),
one CNN pass up to block 14 over the garments it was trained on (train, validation and test
split: the test garments' activations make their tuned cache rows too) and the training
example photos writes their block-14 activations to a temporary float16 memmap under
``RETRIEVAL_MODELS_DIR/tmp`` (18.8 KB an image; deleted afterwards, also on failure). Block 15
+ head conv + FC1/FC2 are fine-tuned on those (:func:`retrieval.features.train_top`), saved as
a new backbone version (``efficientnet_lite0+ft<id>``, :func:`retrieval.features.save_tuned`)
with the tuned head as the model's head file, and the new backbone's cache rows (pooled,
positions, rgb; the example photos' pooled) are computed from the same activations through the
tuned top, without a second CNN pass.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from django.conf import settings

from retrieval.indexing import store_backbone_features
from retrieval.models import FEATURE_VERSION, ExampleFeature, ExamplePhoto, FeatureModel, Garment
from retrieval.spec import tuned_weights_file

if TYPE_CHECKING:
    import numpy as np

    from retrieval.features import TunedTop

log = logging.getLogger(__name__)


@dataclass
class HeadFit:
    """What a head was trained on (for the fine-tuning that may follow, which starts from it).

    ``ids``: ``(N,)`` int64 garment ids in the order of ``y`` (their class index in
    ``classes``); ``train`` / ``val`` / ``test``: ``(n,)`` int64 positions in ``ids``;
    ``head``: the trained head (CPU, eval mode).
    """

    backbone: str
    ids: np.ndarray
    y: np.ndarray
    classes: list[str]
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    category_field: str
    head: Any


@dataclass
class FineTuneResult:
    """What :func:`fine_tune_top` made: the backbone key and its weights file (relative to
    RETRIEVAL_MODELS_DIR) with their SHA-256, the cache rows written from the activations
    (garments, example photos) and the images the CNN pass could not read ({key: reason},
    keys ``garment:<id>`` / ``example:<id>``: skipped, never a failed run)."""

    backbone: str
    weights_file: str
    sha256: str
    garment_rows: int
    example_rows: int
    metrics: dict
    unreadable: dict[str, str] = field(default_factory=dict)


_TAPS_SUFFIX = ".taps.npy"


def _remove_stale_activations(*, tmp_dir: Path) -> None:
    """Delete the activation files of fine-tunings that are no longer running (a worker
    killed mid-training leaves its file: the ``finally`` below never ran)."""
    busy = (FeatureModel.Status.TRAINING, FeatureModel.Status.INDEXING)
    running = set(FeatureModel.objects.filter(status__in=busy).values_list("name", flat=True))
    for path in tmp_dir.glob(f"*{_TAPS_SUFFIX}"):
        if path.name[: -len(_TAPS_SUFFIX)] not in running:
            with contextlib.suppress(OSError):
                path.unlink()
                log.info("removed stale fine-tuning activations %s", path.name)


def _image_source(image: Any) -> str | bytes:
    # A path is picklable for the DataLoader's worker processes; remote storage is read here.
    try:
        return image.path
    except NotImplementedError:
        with image.open("rb") as handle:
            return handle.read(settings.RETRIEVAL_MAX_UPLOAD_BYTES + 1)


def fine_tune_top(
    *,
    model: FeatureModel,
    fit: HeadFit,
    epochs: int,
    seed: int,
    report: Callable[[dict], None],
) -> FineTuneResult:
    """Fine-tune the top for ``model`` from the head ``fit`` trained: the model row gets the
    new backbone key, the tuned head (same head file) and ``metrics["fine_tune"]``; the tuned
    backbone's cache rows are written. See the module docstring."""
    import numpy as np

    from retrieval import features

    key = features.new_tuned_key(base=fit.backbone)
    garments = {g.pk: g for g in Garment.objects.filter(pk__in=fit.ids.tolist())}
    examples = []
    if fit.category_field == "category":  # the head's classes are categories
        examples = list(
            ExamplePhoto.objects.filter(
                role=ExamplePhoto.Role.TRAIN, category__name__in=fit.classes
            )
            .select_related("category")
            .order_by("id")
        )
    # Row i < N: garment fit.ids[i]; row N + j: example photo examples[j].
    n_garments = len(fit.ids)
    items: list[tuple[int, str | bytes]] = []
    unreadable: dict[str, str] = {}
    for row, gid in enumerate(fit.ids.tolist()):
        garment = garments.get(gid)
        if garment is None or not garment.image:
            unreadable[f"garment:{gid}"] = "deleted" if garment is None else "no image"
            continue
        items.append((row, _image_source(garment.image)))
    for j, photo in enumerate(examples):
        if not photo.image:
            unreadable[f"example:{photo.pk}"] = "no image"
            continue
        items.append((n_garments + j, _image_source(photo.image)))

    total = n_garments + len(examples)
    tmp_dir = settings.RETRIEVAL_MODELS_DIR / "tmp"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_activations(tmp_dir=tmp_dir)
    taps_path = tmp_dir / f"{model.name}{_TAPS_SUFFIX}"
    tapper = features.TapExtractor(
        base=fit.backbone,
        device=None if settings.RETRIEVAL_DEVICE == "auto" else settings.RETRIEVAL_DEVICE,
        max_pixels=settings.RETRIEVAL_MAX_PIXELS,
        num_threads=settings.RETRIEVAL_TORCH_THREADS or None,
        tune_malloc=settings.RETRIEVAL_TUNE_MALLOC,
    )
    taps = None
    try:
        started = time.perf_counter()
        # (total, 192, 7, 7) float16 on disk: 40k images = 750 MB, read back a batch at a time.
        taps = np.lib.format.open_memmap(
            taps_path, mode="w+", dtype=np.float16, shape=(max(1, total), 192, 7, 7)
        )
        grid = np.zeros((total, 7, 7, 3), np.float32)  # the 7x7 colour grid: 588 B an image
        ok = np.zeros(total, bool)
        done = 0
        report({"stage": "activations", "done": 0, "total": len(items)})
        workers = settings.RETRIEVAL_LOADER_WORKERS if len(items) > 8 else 0
        for batch in tapper.extract_paths(
            items, batch_size=settings.RETRIEVAL_BATCH_SIZE, num_workers=workers
        ):
            for row, reason in batch.errors:
                name = (
                    f"garment:{int(fit.ids[row])}"
                    if row < n_garments
                    else f"example:{examples[row - n_garments].pk}"
                )
                unreadable[name] = reason
            if batch.keys:
                rows = np.asarray(batch.keys, np.int64)
                taps[rows] = batch.features["taps"]
                grid[rows] = batch.features["grid"]
                ok[rows] = True
            done += len(batch.keys) + len(batch.errors)
            report({"stage": "activations", "done": done, "total": len(items)})
        taps.flush()
        activation_seconds = round(time.perf_counter() - started, 2)

        train_rows = fit.train[ok[fit.train]]
        example_rows = n_garments + np.flatnonzero(ok[n_garments:])
        example_y = np.asarray(
            [fit.classes.index(examples[r - n_garments].category.name) for r in example_rows],
            np.int64,
        )
        val_rows = fit.val[ok[fit.val]]

        def on_epoch(epoch: int, epochs_: int, metrics: dict) -> None:
            report({"stage": "fine_tuning", "epoch": epoch, "epochs": epochs_, **metrics})

        top, metrics = features.train_top(
            taps,
            rows=np.concatenate([train_rows, example_rows]),
            labels=np.concatenate([fit.y[train_rows], example_y]),
            num_classes=len(fit.classes),
            init_head=fit.head,
            epochs=epochs,
            seed=seed,
            val_rows=val_rows,
            val_labels=fit.y[val_rows],
            class_names=fit.classes,
            backbone=key,
            progress=on_epoch,
        )
        metrics.update(
            activation_seconds=activation_seconds,
            examples_used=len(example_rows),
            unreadable=len(unreadable),
        )
        weights_file = tuned_weights_file(key)
        sha256 = features.save_tuned(
            settings.RETRIEVAL_MODELS_DIR / weights_file, top, key=key, metrics=metrics
        )
        garment_rows = _store_tuned_rows(
            top=top, taps=taps, grid=grid, ok=ok, fit=fit, garments=garments, key=key, report=report
        )
        example_count = _store_tuned_example_rows(
            top=top, taps=taps, rows=example_rows, examples=examples, offset=n_garments, key=key
        )
    finally:
        del taps  # the memmap's file handle, before its file goes
        with contextlib.suppress(OSError):
            os.unlink(taps_path)
    # The tuned head replaces the frozen-feature one in the model's head file.
    features.save_head(settings.RETRIEVAL_MODELS_DIR / model.head_file, top.head)
    frozen_val = model.metrics.get("val_accuracy")
    model.backbone = key
    model.status = FeatureModel.Status.INDEXING  # its vectors are computed next
    model.metrics = {
        **model.metrics,
        "frozen_head_val_accuracy": frozen_val,
        "val_accuracy": metrics.get("val_accuracy", frozen_val),
        "fine_tune": {
            "mode": "top",
            "backbone": key,
            "weights_file": weights_file,
            "sha256": sha256,
            **metrics,
        },
    }
    model.save(update_fields=["backbone", "status", "metrics"])
    if unreadable:
        log.warning(
            "fine-tuning %s: %d images unreadable, skipped: %s",
            model.name,
            len(unreadable),
            dict(list(unreadable.items())[:5]),
        )
    return FineTuneResult(
        backbone=key,
        weights_file=weights_file,
        sha256=sha256,
        garment_rows=garment_rows,
        example_rows=example_count,
        metrics=metrics,
        unreadable=unreadable,
    )


def _store_tuned_rows(
    *,
    top: TunedTop,
    taps: np.ndarray,
    grid: np.ndarray,
    ok: np.ndarray,
    fit: HeadFit,
    garments: dict[int, Garment],
    key: str,
    report: Callable[[dict], None],
) -> int:
    """The tuned backbone's cache rows of the garments whose activations were read: pooled
    ``(n, 1280)``, positions ``(n, 10)`` and rgb ``(n, 30)`` from the activations through the
    tuned top and the colour grid (the same maths as a CNN pass; float16 activations)."""
    import numpy as np

    from retrieval import features

    rows = np.flatnonzero(ok[: len(fit.ids)])
    report({"stage": "tuned_features", "done": 0, "total": len(rows)})
    for start in range(0, len(rows), 1024):
        chunk = rows[start : start + 1024]
        pooled, maps = top.pooled_and_maps(taps[chunk])
        positions = features.colour_positions(maps)
        rgb = features.pooled_rgb_at(grid[chunk], positions).reshape(len(chunk), -1)
        store_backbone_features(
            garments=[garments[int(fit.ids[r])] for r in chunk],
            backbone=key,
            pooled=pooled,
            positions=positions,
            rgb=rgb,
        )
        report({"stage": "tuned_features", "done": start + len(chunk), "total": len(rows)})
    return len(rows)


def _store_tuned_example_rows(
    *,
    top: TunedTop,
    taps: np.ndarray,
    rows: np.ndarray,
    examples: list[ExamplePhoto],
    offset: int,
    key: str,
) -> int:
    """The tuned backbone's pooled features of the training example photos that were read."""
    for start in range(0, len(rows), 1024):
        chunk = rows[start : start + 1024]
        pooled, _ = top.pooled_and_maps(taps[chunk])
        ExampleFeature.objects.bulk_create(
            [
                ExampleFeature(
                    photo_id=examples[int(r) - offset].pk,
                    backbone=key,
                    version=FEATURE_VERSION,
                    pooled=pooled[i],
                )
                for i, r in enumerate(chunk)
            ],
            update_conflicts=True,
            unique_fields=["photo", "backbone"],
            update_fields=["version", "pooled", "created_at"],
        )
    return len(rows)
