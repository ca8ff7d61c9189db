"""Fine-tuning the top of efficientnet_lite0 (issue #14): block 15 + head conv + FC1/FC2 on
cached block-14 activations, saved as a new backbone version.

A departure from the paper, which fine-tunes the whole ResNet-50: only the last MBConv block
(the input of which is block 14's ``(192, 7, 7)`` output), the 1x1 head conv (+BN+ReLU6) and
the head learn, with BatchNorm statistics frozen (the cached activations come from the ImageNet
statistics, and batches of 64 of one catalogue are small). Measured in
``bench/partial_finetune.py`` / ``bench/shopper_finetune.py`` (docs/benchmarks.md, "Levers 2
and 3"): held-out studio p@5 0.849 -> 0.870 after 4 epochs, shoppers' photos unchanged.

- :class:`TapExtractor`: one CNN pass (stem + blocks 0..14) over images -> block-14
  activations ``(N, 192, 7, 7)`` (float16 to cache) and the 7x7 colour grid.
- :class:`TunedTop` + :func:`train_top`: the trainable top on those activations.
- :func:`save_tuned` / :func:`load_tuned_state` / :func:`tuned_trunk`: the versioned weights
  file (format, key, base, SHA-256 of the weights) and the full network built from it (the
  base's ImageNet weights with the tuned top over them), which :func:`load_backbone` wraps as
  any other backbone (BatchNorm folding, frozen TorchScript graph).
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from retrieval.features.backbones import (
    _CPU_MICRO_BATCH_BY_BACKBONE,
    _CUDA_MICRO_BATCH,
    _LITE_MEAN,
    _LITE_STD,
    TUNED_FORMAT,
    _digest,
    _fold_batchnorm,
    _lite_net,
    _pick_device,
)
from retrieval.features.cpu import keep_freed_memory_for_reuse
from retrieval.features.extractor import ExtractedBatch, decoded_batches
from retrieval.features.head import ClothingHead, _plain, save_atomically
from retrieval.images import DEFAULT_MAX_PIXELS, ImageSource, pooled_grid
from retrieval.spec import FINE_TUNABLE, TUNED_MARK, base_backbone, is_tuned

logger = logging.getLogger(__name__)


def new_tuned_key(*, base: str) -> str:
    """A new fine-tuned backbone key, ``<base>+ft<8 hex>`` (29 characters for lite0: the
    cache rows' backbone column holds 40)."""
    if base not in FINE_TUNABLE:
        raise ValueError(f"the top of {base!r} cannot be fine-tuned (only {FINE_TUNABLE})")
    return f"{base}{TUNED_MARK}{uuid.uuid4().hex[:8]}"


def top_start(net: Any) -> int:
    """Index of the first fine-tuned block: the last one (lite0: 15; its input is block 14's
    ``(192, 7, 7)`` output)."""
    return len(net._blocks) - 1


class _TapTrunk(nn.Module):
    """uint8 ``(N, 3, 224, 224)`` -> block-14 activations ``(N, 192, 7, 7)`` float32."""

    mean: torch.Tensor
    inv_std: torch.Tensor

    def __init__(self, net: Any, start: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(net._conv_stem, net._bn0, net._swish)
        self.blocks = nn.ModuleList(list(net._blocks)[:start])
        self.register_buffer("mean", torch.tensor(_LITE_MEAN).view(1, 3, 1, 1))
        self.register_buffer("inv_std", 1.0 / torch.tensor(_LITE_STD).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.stem((images.float() - self.mean) * self.inv_std)
        for block in self.blocks:
            x = block(x)  # eval: no drop-connect
        return x


class TapExtractor:
    """One CNN pass up to block 14: what the top trains on and the tuned cache rows are made
    from. Same decoding (:func:`decoded_batches`) and micro-batches as the feature extractor."""

    def __init__(
        self,
        *,
        base: str = "efficientnet_lite0",
        device: str | torch.device | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        micro_batch: int | None = None,
        num_threads: int | None = None,
        tune_malloc: bool = True,
        pretrained: bool = True,
    ) -> None:
        if base not in FINE_TUNABLE:
            raise ValueError(f"the top of {base!r} cannot be fine-tuned (only {FINE_TUNABLE})")
        if num_threads is not None:
            torch.set_num_threads(max(1, int(num_threads)))
        self.device = _pick_device(device)
        net = _lite_net(pretrained)
        self.start = top_start(net)
        trunk = _fold_batchnorm(_TapTrunk(net, self.start).eval())
        self.model = trunk.to(self.device).eval().to(memory_format=torch.channels_last)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.max_pixels = int(max_pixels)
        self.micro_batch = micro_batch or (
            _CUDA_MICRO_BATCH if self.device.type == "cuda" else _CPU_MICRO_BATCH_BY_BACKBONE[base]
        )
        if tune_malloc and self.device.type == "cpu":
            keep_freed_memory_for_reuse()

    @torch.inference_mode()
    def from_arrays(self, rgb224: torch.Tensor) -> dict[str, np.ndarray]:
        """``(N, 224, 224, 3)`` uint8 -> ``taps`` ``(N, 192, 7, 7)`` float16 and ``grid``
        ``(N, 7, 7, 3)`` float32 (RGB 0..255, :func:`retrieval.images.pooled_grid`)."""
        out = []
        for i in range(0, rgb224.shape[0], self.micro_batch):
            x = rgb224[i : i + self.micro_batch].permute(0, 3, 1, 2).to(self.device)
            out.append(self.model(x).to(torch.float16).cpu().numpy())
        return {"taps": np.concatenate(out), "grid": pooled_grid(rgb224.numpy())}

    def extract_paths(
        self,
        items: Iterable[tuple[Any, ImageSource | Image.Image]],
        *,
        batch_size: int = 32,
        num_workers: int = 0,
    ) -> Iterator[ExtractedBatch[Any]]:
        """As :meth:`FeatureExtractor.extract_paths`; features are :meth:`from_arrays`'."""
        for keys, batch, errors in decoded_batches(
            items, batch_size=batch_size, num_workers=num_workers, max_pixels=self.max_pixels
        ):
            features = self.from_arrays(batch) if keys else {}
            yield ExtractedBatch(keys=keys, features=features, errors=errors)


class TunedTop(nn.Module):
    """Block 15 + head conv (+BN+ReLU6) + average pool + :class:`ClothingHead`, on block-14
    activations ``(N, 192, 7, 7)``; ``forward`` gives logits ``(N, classes)``."""

    def __init__(self, net: Any, *, num_classes: int, dropout: float = 0.5) -> None:
        super().__init__()
        net = copy.deepcopy(net)
        self.start = top_start(net)
        self.n_blocks = len(net._blocks)
        self.drop_connect = float(net._global_params.drop_connect_rate or 0.0)
        self.blocks = nn.ModuleList(list(net._blocks)[self.start :])
        self.conv_head: nn.Module = net._conv_head
        self.bn1: nn.Module = net._bn1
        self.act: nn.Module = net._swish
        self.dim = int(net._conv_head.out_channels)  # 1280
        self.head = ClothingHead(self.dim, num_classes, dropout=dropout)
        for p in self.parameters():
            p.requires_grad_(True)

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 192, 7, 7)`` -> the last conv map ``(N, 1280, 7, 7)``."""
        for j, block in enumerate(self.blocks):
            # The pip net's drop-connect schedule (EfficientNet.extract_features), training only.
            rate = self.drop_connect * float(self.start + j) / self.n_blocks
            x = block(x, drop_connect_rate=rate if self.training else None)
        return self.act(self.bn1(self.conv_head(x)))

    def forward(self, taps: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(taps.float()).mean(dim=(2, 3)))

    def train(self, mode: bool = True) -> TunedTop:
        super().train(mode)
        for m in self.modules():  # frozen BatchNorm statistics (see the module docstring)
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
        return self

    def backbone_state(self) -> dict[str, torch.Tensor]:
        """The tuned backbone weights in the pip net's naming (``_blocks.15.*``,
        ``_conv_head.*``, ``_bn1.*``): what :func:`save_tuned` writes."""
        state: dict[str, torch.Tensor] = {}
        for j, block in enumerate(self.blocks):
            for k, v in block.state_dict().items():
                state[f"_blocks.{self.start + j}.{k}"] = v
        for prefix, module in (("_conv_head.", self.conv_head), ("_bn1.", self.bn1)):
            for k, v in module.state_dict().items():
                state[prefix + k] = v
        return {k: v.detach().cpu().clone() for k, v in state.items()}

    @torch.inference_mode()
    def pooled_and_maps(self, taps: np.ndarray, *, batch: int = 256) -> tuple[np.ndarray, ...]:
        """Block-14 activations ``(N, 192, 7, 7)`` (float16/32, e.g. a memmap) -> pooled
        ``(N, 1280)`` and channel-mean maps ``(N, 7, 7)`` float32, as the tuned backbone gives
        them for the same images (to float16 rounding of the cached activations)."""
        self.eval()
        pooled = np.empty((len(taps), self.dim), np.float32)
        maps = np.empty((len(taps), 7, 7), np.float32)
        for i in range(0, len(taps), batch):
            fmap = self.trunk(torch.from_numpy(np.asarray(taps[i : i + batch], np.float32)))
            pooled[i : i + batch] = fmap.mean(dim=(2, 3)).numpy()
            maps[i : i + batch] = fmap.mean(dim=1).numpy()
        return pooled, maps


@torch.inference_mode()
def _accuracy(top: TunedTop, taps: np.ndarray, rows: np.ndarray, labels: np.ndarray) -> float:
    top.eval()
    correct = 0
    for i in range(0, len(rows), 256):
        x = torch.from_numpy(np.asarray(taps[rows[i : i + 256]], np.float32))
        correct += int((top(x).argmax(1).numpy() == labels[i : i + 256]).sum())
    return correct / max(1, len(rows))


def train_top(
    taps: np.ndarray,
    *,
    rows: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    init_head: ClothingHead | None = None,
    epochs: int = 4,
    seed: int = 0,
    batch_size: int = 64,
    lr_head: float = 1e-3,
    lr_blocks: float = 2e-4,
    weight_decay: float = 1e-4,
    label_smoothing: float = 0.1,
    val_rows: np.ndarray | None = None,
    val_labels: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
    backbone: str | None = None,
    progress: Callable[[int, int, dict[str, float]], None] | None = None,
) -> tuple[TunedTop, dict[str, Any]]:
    """Fine-tune block 15 + head conv + FC1/FC2 on cached block-14 activations.

    The recipe measured in ``bench/shopper_finetune.py``: AdamW, one-cycle (15% warm-up),
    lr 1e-3 for FC1/FC2 and 2e-4 for the blocks, label smoothing 0.1, batches of 64, each
    batch mirrored (the activation maps flipped left-right) with probability 0.5, BatchNorm
    statistics frozen, FC1/FC2 started from a head trained on the frozen features
    (``init_head``).

    Args:
        taps: ``(M, 192, 7, 7)`` float16/32 activations (a memmap is read a batch at a time).
        rows: ``(N,)`` int64 rows of ``taps`` to train on; ``labels`` ``(N,)`` int64 their
            classes in ``0..num_classes-1``.
        val_rows, val_labels: validation rows of ``taps`` and their classes: the weights of
            the epoch with the best validation accuracy are kept.
        class_names, backbone: saved with the head (``backbone``: the tuned key).
        progress: as :func:`retrieval.features.train_head`'s, after every epoch:
            ``progress(epoch, epochs, {"epoch", "loss", "seconds"[, "val_accuracy"]})``.

    Returns:
        ``(top, metrics)``: top in eval mode on CPU; metrics has ``train_accuracy``,
        ``val_accuracy`` (with validation), ``best_epoch``, ``epochs``, ``seconds``,
        ``n_train``.
    """
    rows = np.asarray(rows, np.int64)
    y_all = np.asarray(labels, np.int64)
    if rows.shape != y_all.shape:
        raise ValueError(f"rows {rows.shape} and labels {y_all.shape} differ")
    if y_all.size and (int(y_all.min()) < 0 or int(y_all.max()) >= num_classes):
        raise ValueError("labels must be in 0..num_classes-1")
    has_val = val_rows is not None and val_labels is not None and len(val_rows) > 0
    n = len(rows)
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        top = TunedTop(_lite_net(), num_classes=num_classes)
        if init_head is not None:
            top.head.load_state_dict(init_head.state_dict())
        groups = [
            {"params": list(top.head.parameters()), "lr": lr_head},
            {
                "params": [p for k, p in top.named_parameters() if not k.startswith("head.")],
                "lr": lr_blocks,
            },
        ]
        opt = torch.optim.AdamW(groups, weight_decay=weight_decay)
        steps = max(1, epochs * math.ceil(n / batch_size))
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=[lr_head, lr_blocks], total_steps=steps, pct_start=0.15
        )
        loss_fn = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        best_acc, best_epoch, best_state = -1.0, 0, None
        for epoch in range(1, epochs + 1):
            top.train()
            order = torch.randperm(n, generator=gen).numpy()
            total = 0.0
            for i in range(0, n, batch_size):
                sel = order[i : i + batch_size]
                sel = sel[np.argsort(rows[sel])]  # sequential reads of a memmap
                x = torch.from_numpy(np.asarray(taps[rows[sel]], np.float32))
                if torch.rand(1, generator=gen).item() < 0.5:  # ~ mirrored photos
                    x = torch.flip(x, dims=[3])
                loss = loss_fn(top(x), torch.from_numpy(y_all[sel]))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += float(loss.detach()) * len(sel)
            metrics: dict[str, float] = {
                "epoch": epoch,
                "loss": total / max(1, n),
                "seconds": round(time.perf_counter() - start, 3),
            }
            if has_val:
                assert val_rows is not None and val_labels is not None
                acc = _accuracy(top, taps, np.asarray(val_rows), np.asarray(val_labels))
                metrics["val_accuracy"] = acc
                if acc > best_acc:
                    best_acc, best_epoch = acc, epoch
                    best_state = copy.deepcopy(top.state_dict())
            if progress is not None:
                progress(epoch, epochs, dict(metrics))
    if best_state is not None:
        top.load_state_dict(best_state)
    top.eval()
    top.head.class_names = list(class_names) if class_names is not None else None
    top.head.backbone = backbone
    result: dict[str, Any] = {
        "train_accuracy": _accuracy(top, taps, rows, y_all),
        "best_epoch": best_epoch if has_val else epochs,
        "epochs": epochs,
        "seconds": round(time.perf_counter() - start, 3),
        "n_train": n,
        "num_classes": num_classes,
        "seed": seed,
    }
    if has_val:
        assert val_rows is not None
        result["val_accuracy"] = best_acc
        result["n_val"] = len(val_rows)
    top.head.metrics = dict(result)
    return top, result


def save_tuned(
    path: str | os.PathLike[str], top: TunedTop, *, key: str, metrics: dict | None = None
) -> str:
    """Write the tuned backbone weights atomically (temp file in the same folder, fsync,
    ``os.replace``): format, key, base, first tuned block, their SHA-256 and metrics. The head
    (FC1/FC2) is saved apart, with :func:`retrieval.features.save_head`. Returns the SHA-256."""
    if not is_tuned(key):
        raise ValueError(f"{key!r} is not a fine-tuned backbone key")
    path = os.fspath(path)
    state = top.backbone_state()
    sha256 = _digest(state)
    payload = {
        "format": TUNED_FORMAT,
        "key": key,
        "base": base_backbone(key),
        "start": top.start,
        "sha256": sha256,
        "metrics": _plain(metrics or {}),
        "state_dict": state,
    }
    save_atomically(payload, path=path, prefix=".backbone-")
    return sha256
