"""The head: FC1 (-> 512, the deep feature) and FC2 (-> categories); training, saving, loading."""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from retrieval.spec import DEEP_DIM

logger = logging.getLogger(__name__)


_HEAD_FORMAT = "fashionsite.retrieval.head/1"


class ClothingHead(nn.Module):
    """FC1 (D -> 512) + ReLU + dropout + FC2 (512 -> categories).

    The deep feature is the FC1 activation (after ReLU), ``(N, 512)``.

    Attributes (metadata saved with the weights): ``class_names`` (list of str or None),
    ``backbone`` (name the pooled features came from, or None), ``metrics`` (dict).
    """

    def __init__(
        self, in_dim: int, num_classes: int, *, hidden: int = DEEP_DIM, dropout: float = 0.5
    ) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.num_classes = num_classes
        self.hidden = hidden
        self.fc1 = nn.Linear(in_dim, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)
        self.dropout = nn.Dropout(dropout)
        self.class_names: list[str] | None = None
        self.backbone: str | None = None
        self.metrics: dict[str, Any] = {}

    def embed(self, pooled: torch.Tensor) -> torch.Tensor:
        """``(N, D)`` -> deep feature ``(N, 512)``."""
        return F.relu(self.fc1(pooled))

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """``(N, D)`` -> logits ``(N, num_classes)``."""
        return self.fc2(self.dropout(self.embed(pooled)))


@torch.inference_mode()
def _accuracy(head: ClothingHead, x: torch.Tensor, y: torch.Tensor) -> float:
    head.eval()
    correct = 0
    for i in range(0, x.shape[0], 8192):
        correct += int((head(x[i : i + 8192]).argmax(1) == y[i : i + 8192]).sum())
    return correct / max(1, x.shape[0])


def auto_epochs(rows: int) -> int:
    """Epochs for a ~320k-sample training budget, clamped to 30..100.

    The floor of 30 (was 10) is measured: on the whole 39.7k catalogue (31,751 rows) 10 epochs
    gave held-out studio p@5 0.844 and 30 gave 0.865 (docs/benchmarks.md, "Through the product").
    """
    return int(min(100, max(30, round(320_000 / max(1, rows)))))


def train_head(
    pooled: np.ndarray,
    labels: np.ndarray,
    *,
    num_classes: int,
    epochs: int | None = None,
    seed: int = 0,
    batch_size: int = 256,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    dropout: float = 0.5,
    label_smoothing: float = 0.1,
    val_pooled: np.ndarray | None = None,
    val_labels: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
    backbone: str | None = None,
    progress: Callable[[int, int, dict[str, float]], None] | None = None,
) -> tuple[ClothingHead, dict[str, Any]]:
    """Train FC1+FC2 with cross-entropy on cached pooled backbone features (backbone frozen).

    Args:
        pooled: ``(N, D)`` float32 pooled backbone features.
        labels: ``(N,)`` int64 category ids in ``0..num_classes-1``.
        num_classes: number of categories (FC2 outputs).
        epochs: None = a fixed budget of ~320k samples (40 epochs for 8k rows, 30 for 32k,
            at least 30, at most 100): more rows need fewer passes, so the time stays ~constant
            up to ~10k rows and grows linearly beyond
            (8k rows x 40 epochs: 15-30 s on 2 CPU cores; val accuracy 0.849 vs 0.837 with
            20 epochs and 0.814 with 10 on the catalogue, docs/benchmarks.md).
        batch_size, lr, weight_decay: AdamW minibatch training with a one-cycle schedule.
        dropout, label_smoothing: regularisation (the head is small next to the data, but
            articleType classes are very uneven).
        seed: makes the result reproducible (init + shuffling); the global RNG is untouched.
        val_pooled, val_labels: optional validation set; when given, the weights of the epoch
            with the best validation accuracy are kept (early stopping).
        class_names: category names saved with the head (index = label id).
        backbone: backbone name the features came from (saved, checked by the extractor).
        progress: called as ``progress(epoch, epochs, metrics)`` after every epoch; metrics
            has ``epoch``, ``loss`` (mean training loss), ``seconds`` (since the first epoch
            began) and, with validation, ``val_accuracy``.

    Returns:
        ``(head, metrics)``: head in eval mode on CPU; metrics has ``train_accuracy``,
        ``val_accuracy`` (if validation given), ``best_epoch``, ``epochs``, ``seconds``,
        ``n_train``.
    """
    x = torch.from_numpy(np.ascontiguousarray(pooled, dtype=np.float32))
    y = torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64))
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"pooled must be (N, D) and labels (N,), got {x.shape}, {y.shape}")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError("labels must be in 0..num_classes-1")
    has_val = val_pooled is not None and val_labels is not None
    if has_val:
        xv = torch.from_numpy(np.ascontiguousarray(val_pooled, dtype=np.float32))
        yv = torch.from_numpy(np.ascontiguousarray(val_labels, dtype=np.int64))
    if epochs is None:
        epochs = auto_epochs(x.shape[0])
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = ClothingHead(x.shape[1], num_classes, dropout=dropout)
        gen = torch.Generator().manual_seed(seed)
        opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
        steps = max(1, epochs * math.ceil(x.shape[0] / batch_size))
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
        loss_fn = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        best_acc, best_epoch, best_state = -1.0, 0, None
        metrics: dict[str, Any] = {}
        for epoch in range(1, epochs + 1):
            head.train()
            order = torch.randperm(x.shape[0], generator=gen)
            total = 0.0
            for i in range(0, x.shape[0], batch_size):
                idx = order[i : i + batch_size]
                loss = loss_fn(head(x[idx]), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += float(loss.detach()) * idx.numel()
            metrics = {
                "epoch": epoch,
                "loss": total / max(1, x.shape[0]),
                # Since the first epoch began: the admin's time left is the mean epoch so far.
                "seconds": round(time.perf_counter() - start, 3),
            }
            if has_val:
                acc = _accuracy(head, xv, yv)
                metrics["val_accuracy"] = acc
                if acc > best_acc:
                    best_acc, best_epoch = acc, epoch
                    best_state = copy.deepcopy(head.state_dict())
            if progress is not None:
                progress(epoch, epochs, dict(metrics))
    if best_state is not None:
        head.load_state_dict(best_state)
    head.eval()
    head.class_names = list(class_names) if class_names is not None else None
    head.backbone = backbone
    result: dict[str, Any] = {
        "train_accuracy": _accuracy(head, x, y),
        "best_epoch": best_epoch if has_val else epochs,
        "epochs": epochs,
        "seconds": round(time.perf_counter() - start, 3),
        "n_train": int(x.shape[0]),
        "num_classes": num_classes,
        "seed": seed,
    }
    if has_val:
        result["val_accuracy"] = best_acc
        result["n_val"] = int(xv.shape[0])
    head.metrics = dict(result)
    return head, result


def save_head(path: str | os.PathLike[str], head: ClothingHead) -> None:
    """Write the head (weights + metadata) atomically: temp file in the same dir + os.replace.

    A reader never sees a half-written file, and a crash leaves the previous head intact.
    """
    path = os.fspath(path)
    payload = {
        "format": _HEAD_FORMAT,
        "in_dim": head.in_dim,
        "hidden": head.hidden,
        "num_classes": head.num_classes,
        "dropout": float(head.dropout.p),
        "class_names": head.class_names,
        "backbone": head.backbone,
        "metrics": _plain(head.metrics),
        "state_dict": {k: v.detach().cpu().clone() for k, v in head.state_dict().items()},
    }
    save_atomically(payload, path=path, prefix=".head-")


def save_atomically(payload: dict[str, Any], *, path: str, prefix: str) -> None:
    """``torch.save`` into a temp file of ``path``'s folder, fsync, then ``os.replace``: a
    reader never sees a half-written file and a crash leaves the previous one intact."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _plain(obj: Any) -> Any:
    """Metadata limited to what ``torch.load(weights_only=True)`` accepts."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    return str(obj)


def load_head(path: str | os.PathLike[str] | bytes) -> ClothingHead:
    """Load a head written by :func:`save_head` (a path, or the file's bytes). CPU, eval mode."""
    src: Any = io.BytesIO(path) if isinstance(path, bytes) else os.fspath(path)
    payload = torch.load(src, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != _HEAD_FORMAT:
        raise ValueError(f"{path!r} is not a retrieval head file ({_HEAD_FORMAT})")
    head = ClothingHead(
        payload["in_dim"],
        payload["num_classes"],
        hidden=payload["hidden"],
        dropout=payload.get("dropout", 0.5),
    )
    head.load_state_dict(payload["state_dict"])
    head.class_names = payload.get("class_names")
    head.backbone = payload.get("backbone")
    head.metrics = payload.get("metrics") or {}
    return head.eval()


@torch.inference_mode()
def deep_from_pooled(head: ClothingHead, pooled: np.ndarray, *, batch: int = 8192) -> np.ndarray:
    """Deep features from stored pooled features, without running the CNN.

    Args:
        head: trained head (any device).
        pooled: ``(N, D)`` float32.

    Returns:
        ``(N, 512)`` float32 FC1 activations.
    """
    head.eval()
    dev = next(head.parameters()).device
    x = np.ascontiguousarray(pooled, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != head.in_dim:
        raise ValueError(f"pooled must be (N, {head.in_dim}), got {x.shape}")
    out = np.empty((x.shape[0], head.hidden), dtype=np.float32)
    for i in range(0, x.shape[0], batch):
        out[i : i + batch] = head.embed(torch.from_numpy(x[i : i + batch]).to(dev)).cpu().numpy()
    return out


@torch.inference_mode()
def classify(head: ClothingHead, pooled: np.ndarray) -> np.ndarray:
    """Category probabilities ``(N, num_classes)`` float32 (softmax of FC2) from pooled."""
    head.eval()
    dev = next(head.parameters()).device
    x = torch.from_numpy(np.ascontiguousarray(pooled, dtype=np.float32)).to(dev)
    return torch.softmax(head(x), dim=1).cpu().numpy().astype(np.float32)
