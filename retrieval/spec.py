"""The retrieval method's named choices, free of torch and Django: one definition each.

:mod:`retrieval.features` (torch), :mod:`retrieval.search` and the settings checks
(:mod:`retrieval.checks`, which must not import torch) all read them from here.
"""

from __future__ import annotations

#: CNN backbones (``RETRIEVAL_BACKBONE`` also takes ``"auto"``, :data:`BACKBONE_CHOICES`).
BACKBONES: tuple[str, ...] = ("resnet50", "efficientnet_lite0")
BACKBONE_CHOICES: tuple[str, ...] = ("auto", *BACKBONES)

#: Colour variants, all computed from the same raw ``(10, 3)`` RGB (0..255) at the top-10
#: positions, all 30-d (so the fused vector is 542-d whichever is used):
#:
#: - ``"paper"``: the paper exactly: z-score over the whole 10x3 matrix, ``(x - mu) / sigma``.
#: - ``"lab"``: CIELAB (D65) per position, every channel / 100, *not* z-scored: the
#:   per-position Euclidean distance is CIE76 Delta-E / 100.
#: - ``"lab_mean"`` (default, ours): the mean L*a*b* of the 10 positions with L* half-weighted
#:   (L/200, a/100, b/100), repeated for the 10 slots. Order-invariant: two garments of one
#:   colour match even when their salient blocks rank differently, and half-weighted
#:   lightness tolerates the shading/exposure differences between studio shots.
#: - ``"rgb"``: ablation: raw RGB / 255 per position (absolute colour without Lab).
COLOUR_VARIANTS: tuple[str, ...] = ("paper", "lab", "lab_mean", "rgb")

#: CNN precisions a feature extractor runs at (``RETRIEVAL_PRECISION`` also takes ``"auto"``:
#: fp16 autocast on CUDA, fp32 on CPU; :data:`PRECISION_CHOICES`).
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")
PRECISION_CHOICES: tuple[str, ...] = ("auto", *PRECISIONS)

#: ``RETRIEVAL_RERANK``: ``"none"`` = the paper's ranking by fused distance, ``"category"`` =
#: the garments of the category the head predicts first (:mod:`retrieval.rerank`).
RERANK_MODES: tuple[str, ...] = ("none", "category")

#: Search modes (:func:`retrieval.search.search_vectors`): the fused feature, the 512-d
#: deep-only baseline, or the fused feature ranked over the whole catalogue (no clusters).
SEARCH_MODES: tuple[str, ...] = ("fused", "deep", "exact")
