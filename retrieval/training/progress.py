"""A training's progress as the admin shows it: elapsed time, pace and time left per stage.

A training (and an activation's re-index) reports plain dicts, saved on
``FeatureModel.progress`` as they come:

- ``{"stage": "extracting", "done", "total"}``: the CNN features of garments that have none;
- ``{"stage": "extracting_examples", "done", "total"}``: the same for training example photos;
- ``{"stage": "training", "epoch", "epochs", "loss", "val_accuracy", "seconds"}``: after each
  epoch of the head (``seconds`` since its first epoch began, measured by the training loop);
- ``{"stage": "activations", "done", "total"}`` (RETRIEVAL_FINE_TUNE=top): the CNN pass up to
  block 14 over the catalogue and the training example photos;
- ``{"stage": "fine_tuning", "epoch", "epochs", "loss", "val_accuracy", "seconds"}``: after
  each epoch of the fine-tuned top (block 15 + head conv + FC1/FC2);
- ``{"stage": "tuned_features", "done", "total"}``: the fine-tuned backbone's cache rows, from
  the block-14 activations;
- ``{"stage": "vectors", "done", "total"}``: searchable vectors from the cached features;
- ``{"stage": "queued" | "clustering" | "done"}``.

:class:`StageClock` stamps each with ``elapsed_s`` (since the stage began) and ``left_s``
(:func:`time_left`: the mean pace so far, the one place that estimate is made), and
``per_second`` where the stage counts images or vectors; :func:`progress_text` is the line
the admin shows for one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

#: What each stage is called in the admin.
STAGE_NAMES: dict[str, str] = {
    "queued": "queued",
    "extracting": "CNN features",
    "extracting_examples": "CNN features of the example photos",
    "training": "training",
    "activations": "CNN activations (block 14) for fine-tuning",
    "fine_tuning": "fine-tuning the CNN's top",
    "tuned_features": "CNN features of the fine-tuned backbone",
    "vectors": "vectors",
    "clustering": "clustering (K-means)",
    "done": "done",
}


def time_left(*, done: float, total: float, elapsed_s: float) -> float | None:
    """Seconds left at the mean pace so far: ``elapsed_s / done * (total - done)``.

    ``done`` and ``total`` count epochs (the mean epoch time so far) or images / vectors (the
    mean rate so far). None while nothing is done yet (no pace to go by); 0 once all is.
    """
    if done <= 0 or total <= 0 or elapsed_s < 0:
        return None
    return max(0.0, elapsed_s / done * (total - done))


class StageClock:
    """Stamps progress states with the time their stage has taken and the time it has left.

    A stage begins at the first state that names it (the reporters send ``done=0`` before
    their first chunk); a training state brings its own ``seconds``, measured from the start
    of the first epoch (its first state comes after that epoch).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._stage: str | None = None
        self._started = 0.0

    def stamp(self, state: dict[str, Any]) -> dict[str, Any]:
        """A copy of ``state`` with ``elapsed_s``, ``left_s`` and ``per_second`` where they
        apply (rounded: it is stored as JSON and shown to people)."""
        now = self._clock()
        stage = state.get("stage")
        if stage != self._stage:
            self._stage, self._started = stage, now
        out = dict(state)
        if "epoch" in state and "epochs" in state:
            elapsed = float(state.get("seconds", now - self._started))
            done, total = float(state["epoch"]), float(state["epochs"])
        elif "done" in state and "total" in state:
            elapsed = now - self._started
            done, total = float(state["done"]), float(state["total"])
            if done > 0 and elapsed > 0:
                out["per_second"] = round(done / elapsed, 2)
        else:
            return out
        out["elapsed_s"] = round(elapsed, 1)
        left = time_left(done=done, total=total, elapsed_s=elapsed)
        if left is not None:
            out["left_s"] = round(left, 1)
        return out


def duration_text(seconds: float) -> str:
    """``0:42``, ``12:05``, ``1:02:03`` (h:mm:ss from an hour)."""
    whole = max(0, round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def progress_text(progress: dict[str, Any] | None) -> str:
    """One line for the admin, e.g. ``training: epoch 3/20 · loss 0.412 · validation accuracy
    0.873 · 0:42 elapsed · about 4:12 left`` or ``CNN features: 512/3000 · 5.1 images/s ·
    1:40 elapsed · about 8:07 left``; ``-`` when there is none."""
    p = progress or {}
    stage = p.get("stage")
    if not stage:
        return "-"
    name = STAGE_NAMES.get(stage, str(stage))
    parts: list[str] = []
    if "epoch" in p and "epochs" in p:
        parts.append(f"epoch {p['epoch']}/{p['epochs']}")
        if p.get("loss") is not None:
            parts.append(f"loss {float(p['loss']):.3f}")
        if p.get("val_accuracy") is not None:
            parts.append(f"validation accuracy {float(p['val_accuracy']):.3f}")
    elif "done" in p and "total" in p:
        parts.append(f"{p['done']}/{p['total']}")
        if p.get("per_second") is not None:
            unit = "images/s" if stage in ("extracting", "activations") else "/s"
            parts.append(f"{float(p['per_second']):.1f} {unit}".replace(" /s", "/s"))
    else:
        return name
    if p.get("elapsed_s") is not None:
        parts.append(f"{duration_text(float(p['elapsed_s']))} elapsed")
    if p.get("left_s") is not None:
        parts.append(f"about {duration_text(float(p['left_s']))} left")
    return f"{name}: " + " · ".join(parts)
