"""Read helpers shared by every layer: the active model, what a user may see."""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import Count

from retrieval.models import (
    Category,
    FeatureModel,
    Garment,
    ImportJob,
)


def active_model() -> FeatureModel | None:
    return FeatureModel.objects.filter(active=True).first()


def visible_garments(user):
    """Garments a user may see: shoppers the indexed ones of active categories, staff all."""
    if user.is_staff:
        return Garment.objects.all()
    return Garment.objects.filter(status=Garment.Status.READY, category__active=True)


def visible_categories(user):
    """Categories a user may see: shoppers the active ones, staff all."""
    return Category.objects.all() if user.is_staff else Category.objects.filter(active=True)


@dataclass(frozen=True)
class SetupProgress:
    """What the catalogue is doing while search by photo is not ready yet, for the home page:
    ``stage`` importing, indexing or training; ``message`` in words; ``percent`` when known."""

    stage: str
    message: str
    percent: float | None = None


def setup_progress() -> SetupProgress | None:
    """The stage a catalogue being set up is at (an import running, photos being indexed, a
    model training), or None when nothing is under way."""
    running = ImportJob.objects.filter(
        status__in=[ImportJob.Status.PENDING, ImportJob.Status.RUNNING]
    ).first()
    if running is not None:
        return SetupProgress(
            stage="importing",
            message=f"Importing the catalogue: {running.rows:,} garments read so far.",
        )
    training = FeatureModel.objects.filter(
        status__in=[FeatureModel.Status.TRAINING, FeatureModel.Status.INDEXING]
    ).first()
    if training is not None:
        return _training_progress(training.progress or {})
    counts = dict(
        Garment.objects.order_by()
        .values_list("status")
        .annotate(n=Count("id"))
        .values_list("status", "n")
    )
    waiting = counts.get(Garment.Status.PENDING, 0) + counts.get(Garment.Status.PROCESSING, 0)
    if waiting:
        total = sum(counts.values())
        done = total - waiting
        return SetupProgress(
            stage="indexing",
            message=f"Reading the garments' photos: {done:,} of {total:,} done.",
            percent=round(100.0 * done / total, 1),
        )
    return None


def _training_progress(state: dict) -> SetupProgress:
    """A training model's progress (``FeatureModel.progress``: stage, done/total or epoch)."""
    stage = str(state.get("stage", "queued"))
    done, total = state.get("done"), state.get("total")
    epoch, epochs = state.get("epoch"), state.get("epochs")
    words = {
        "queued": "Training the search model: waiting for a worker.",
        "extracting": "Training the search model: reading the photos",
        "vectors": "Training the search model: indexing the catalogue",
        "clustering": "Training the search model: grouping similar garments (last step).",
    }
    message = words.get(stage, "Training the search model")
    percent = None
    if isinstance(done, int) and isinstance(total, int) and total:
        message += f" ({done:,} of {total:,})."
        percent = round(100.0 * done / total, 1)
    elif isinstance(epoch, int) and isinstance(epochs, int) and epochs:
        message += f": round {epoch} of {epochs}."
        percent = round(100.0 * epoch / epochs, 1)
    elif not message.endswith("."):
        message += "."
    return SetupProgress(stage="training", message=message, percent=percent)
