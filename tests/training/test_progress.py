"""A training's progress (retrieval.training.progress): time left from the mean pace so far,
the admin's line for each stage, and what a real training of the trained catalogue reports."""

from __future__ import annotations

import pytest

from retrieval import training
from retrieval.training.progress import StageClock, duration_text, progress_text, time_left


def test_time_left_is_the_mean_pace_so_far_times_what_remains():
    assert time_left(done=3, total=20, elapsed_s=30.0) == pytest.approx(170.0)  # 10 s/epoch
    assert time_left(done=500, total=2000, elapsed_s=100.0) == pytest.approx(300.0)  # 5/s
    assert time_left(done=20, total=20, elapsed_s=200.0) == 0.0
    assert time_left(done=0, total=20, elapsed_s=5.0) is None  # no pace yet
    assert time_left(done=0, total=0, elapsed_s=0.0) is None


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_clock_times_each_stage_from_its_first_state():
    clock = FakeClock()
    stamp = StageClock(clock).stamp
    assert stamp({"stage": "queued"}) == {"stage": "queued"}
    first = stamp({"stage": "extracting", "done": 0, "total": 1000})
    assert first["elapsed_s"] == 0.0 and "left_s" not in first
    clock.now += 50.0
    later = stamp({"stage": "extracting", "done": 250, "total": 1000})
    assert (later["elapsed_s"], later["per_second"], later["left_s"]) == (50.0, 5.0, 150.0)
    # Training brings its own seconds (its first state comes after the first epoch).
    clock.now += 999.0
    epoch = stamp({"stage": "training", "epoch": 2, "epochs": 10, "loss": 1.2, "seconds": 8.0})
    assert (epoch["elapsed_s"], epoch["left_s"]) == (8.0, 32.0)
    vectors = stamp({"stage": "vectors", "done": 0, "total": 300})  # a new stage, a new start
    clock.now += 2.0
    vectors = stamp({"stage": "vectors", "done": 300, "total": 300})
    assert (vectors["elapsed_s"], vectors["left_s"], vectors["per_second"]) == (2.0, 0.0, 150.0)


def test_the_admins_line_for_each_stage():
    assert progress_text(None) == "-"
    assert progress_text({}) == "-"
    assert progress_text({"stage": "queued"}) == "queued"
    assert progress_text({"stage": "clustering"}) == "clustering (K-means)"
    assert (
        progress_text(
            {
                "stage": "extracting",
                "done": 512,
                "total": 3000,
                "per_second": 5.12,
                "elapsed_s": 100.0,
                "left_s": 486.0,
            }
        )
        == "CNN features: 512/3000 · 5.1 images/s · 1:40 elapsed · about 8:06 left"
    )
    assert (
        progress_text(
            {
                "stage": "training",
                "epoch": 3,
                "epochs": 20,
                "loss": 0.41234,
                "val_accuracy": 0.8731,
                "seconds": 42.0,
                "elapsed_s": 42.0,
                "left_s": 238.0,
            }
        )
        == "training: epoch 3/20 · loss 0.412 · validation accuracy 0.873 · 0:42 elapsed · "
        "about 3:58 left"
    )
    # RETRIEVAL_FINE_TUNE=top's stages.
    assert progress_text(
        {"stage": "activations", "done": 64, "total": 300, "per_second": 20.0}
    ) == ("CNN activations (block 14) for fine-tuning: 64/300 · 20.0 images/s")
    assert progress_text(
        {"stage": "fine_tuning", "epoch": 1, "epochs": 4, "loss": 1.5, "val_accuracy": 0.8}
    ) == ("fine-tuning the CNN's top: epoch 1/4 · loss 1.500 · validation accuracy 0.800")
    # Without a validation split there is no validation accuracy; an old row, no timing.
    assert progress_text({"stage": "training", "epoch": 1, "epochs": 5, "loss": 2.0}) == (
        "training: epoch 1/5 · loss 2.000"
    )
    assert (
        progress_text(
            {
                "stage": "vectors",
                "done": 4096,
                "total": 8000,
                "per_second": 2048.0,
                "elapsed_s": 2.0,
                "left_s": 1.9,
            }
        )
        == "vectors: 4096/8000 · 2048.0/s · 0:02 elapsed · about 0:02 left"
    )
    assert duration_text(3723) == "1:02:03"


@pytest.mark.django_db
@pytest.mark.slow
def test_a_training_reports_loss_validation_accuracy_and_time_left(trained_catalogue):
    """Every stage of a real training (the trained catalogue, 5 garments without a CNN cache)
    is timed; the last epoch has its loss, validation accuracy and nothing left."""
    from retrieval.models import BackboneFeature, FeatureModel, Garment

    dropped = list(
        Garment.objects.filter(status=Garment.Status.READY).values_list("id", flat=True)[:5]
    )
    BackboneFeature.objects.filter(garment_id__in=dropped).delete()
    states: list[dict] = []
    model = training.train_model(epochs=3, activate=False, progress=states.append)
    try:
        extracting = [s for s in states if s["stage"] == "extracting"]
        assert (extracting[0]["done"], extracting[-1]["done"]) == (0, 5)
        assert extracting[-1]["left_s"] == 0.0 and extracting[-1]["per_second"] > 0

        epochs = [s for s in states if s["stage"] == "training"]
        assert [s["epoch"] for s in epochs] == [1, 2, 3]
        last = epochs[-1]
        assert last["epochs"] == 3 and last["loss"] > 0 and 0 <= last["val_accuracy"] <= 1
        # Elapsed is stamped on every epoch and never goes back (3 epochs of a tiny head can
        # take under 0.05 s: rounded to 0.0 on a fast machine, so no "> 0" here).
        assert last["left_s"] == 0.0
        assert last["elapsed_s"] >= epochs[0]["elapsed_s"] >= 0
        assert epochs[0]["left_s"] == pytest.approx(2 * epochs[0]["elapsed_s"], abs=0.2)
        text = progress_text(last)
        assert text.startswith("training: epoch 3/3 · loss ") and "validation accuracy" in text
        assert text.endswith("about 0:00 left")

        vectors = [s for s in states if s["stage"] == "vectors"]
        assert vectors[-1]["done"] == vectors[-1]["total"] and vectors[-1]["left_s"] == 0.0
        model.refresh_from_db()
        assert model.progress == {"stage": "done"}
        assert model.status == FeatureModel.Status.READY
    finally:
        model.head_path.unlink(missing_ok=True)


@pytest.mark.django_db
@pytest.mark.slow
def test_the_train_model_command_prints_the_admins_line(trained_catalogue):
    import io

    from django.core.management import call_command

    from retrieval.models import FeatureModel

    before = set(FeatureModel.objects.values_list("pk", flat=True))
    out = io.StringIO()
    call_command("train_model", "--epochs", "2", "--no-activate", stdout=out)
    try:
        lines = out.getvalue().splitlines()
        last = next(line for line in lines if "epoch 2/2" in line)
        assert last.startswith("  training: epoch 2/2 · loss ") and "validation accuracy" in last
        assert last.endswith("elapsed · about 0:00 left")
        assert any(line.startswith("  vectors: ") and "left" in line for line in lines)
    finally:
        for model in FeatureModel.objects.exclude(pk__in=before):
            model.head_path.unlink(missing_ok=True)
