"""CPU speed: glibc heap reuse and a frozen TorchScript graph per backbone (measured in
docs/benchmarks.md).
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
import threading
import warnings
import weakref

import torch
from torch import nn

from retrieval.features.backbones import Backbone
from retrieval.images import (
    INPUT_SIZE,
)

logger = logging.getLogger(__name__)


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
