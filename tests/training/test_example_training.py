"""Training learns from the example photos of role train (issue #14), never from held-out
ones; photos whose category the model does not classify are counted as skipped."""

from __future__ import annotations

import pytest

from retrieval import catalogue, training
from retrieval.models import Category, ExampleFeature, ExamplePhoto, FeatureModel, Garment
from tests.catalogue_zips import examples_from_garments


def senders_with_role(role: str, n: int, *, holdout: float) -> list[str]:
    """n sender names the split (sha1 of the sender) puts on ``role``."""
    found: list[str] = []
    i = 0
    while len(found) < n:
        name = f"sender-{i}"
        if catalogue.example_role(sender=name, key="", holdout=holdout) == role:
            found.append(name)
        i += 1
    return found


@pytest.mark.slow
@pytest.mark.django_db
def test_training_uses_the_train_examples_and_never_the_held_out_ones(trained_catalogue, tmp_path):
    garments = list(
        Garment.objects.filter(pk__in=trained_catalogue.ids[Garment])
        .select_related("category")
        .order_by("sku")[:6]
    )
    train_a, train_b = senders_with_role(ExamplePhoto.Role.TRAIN, 2, holdout=0.5)
    (held,) = senders_with_role(ExamplePhoto.Role.HOLDOUT, 1, holdout=0.5)
    Category.objects.create(name="Not Trained On")  # a category no garment has
    source = examples_from_garments(
        tmp_path / "examples.zip",
        [
            ("t1", garments[0], train_a),
            ("t2", garments[1], train_a),
            ("t3", garments[2], train_b),
            ("t4", garments[3], train_b, "Not Trained On"),
            ("h1", garments[4], held),
            ("h2", garments[5], held),
        ],
    )
    report = catalogue.import_example_photos(source=source, holdout=0.5)
    assert report.created == 6 and report.roles == {"train": 4, "holdout": 2}
    active = FeatureModel.objects.get(active=True)

    model = training.train_model(epochs=2, activate=False)

    assert model.metrics["examples_used"] == 3  # t1-t3
    assert model.metrics["examples_skipped"] == 1  # t4: its category is not a class
    # The held-out photos never went through the CNN for training, let alone into the head.
    assert set(ExampleFeature.objects.values_list("photo__key", flat=True)) == {
        "t1",
        "t2",
        "t3",
        "t4",
    }
    assert FeatureModel.objects.get(active=True) == active
    # Validation stays on studio photos: the studio split's sizes are unchanged.
    assert model.metrics["n_val"] == active.metrics["n_val"]
    # A second training reuses the cache (no new CNN pass: the rows are the same rows).
    before = dict(ExampleFeature.objects.values_list("photo_id", "created_at"))
    again = training.train_model(epochs=1, activate=False)
    assert dict(ExampleFeature.objects.values_list("photo_id", "created_at")) == before
    assert again.metrics["examples_used"] == 3
