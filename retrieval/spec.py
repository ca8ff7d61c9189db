"""The method's fixed names and sizes, free of torch and Django: what every layer (and the
settings checks, :mod:`retrieval.checks`) may import.

Vector sizes follow the paper: the deep feature is FC1's 512 outputs, the colour feature the
RGB (or CIELAB, our departure) of the 10 strongest of 49 conv-map positions (10 x 3 = 30), the
fused vector their concatenation (542).
"""

from __future__ import annotations

#: FC1 output, the paper's deep feature.
DEEP_DIM = 512
#: Positions of the channel-mean conv map whose pooled colour is kept.
NUM_POSITIONS = 10
#: 10 positions x 3 channels, the paper's colour feature.
COLOUR_DIM = NUM_POSITIONS * 3
#: deep + colour = 542.
FUSED_DIM = DEEP_DIM + COLOUR_DIM

#: Backbones (CNN without its classifier) and the size of their pooled feature.
BACKBONES: tuple[str, ...] = ("resnet50", "efficientnet_lite0")
#: ``RETRIEVAL_BACKBONE`` also takes ``"auto"``: resnet50 where its weights are found.
BACKBONE_CHOICES: tuple[str, ...] = ("auto", *BACKBONES)
POOLED_DIMS: dict[str, int] = {"resnet50": 2048, "efficientnet_lite0": 1280}

#: ``RETRIEVAL_FINE_TUNE``: ``"off"`` = the backbone stays frozen (only FC1/FC2 learn);
#: ``"top"`` = efficientnet_lite0's last block (15) + head conv + FC1/FC2 are fine-tuned on
#: cached block-14 activations (issue #14; docs/benchmarks.md, "Levers 2 and 3").
FINE_TUNE_MODES: tuple[str, ...] = ("off", "top")
#: Backbones whose top can be fine-tuned.
FINE_TUNABLE: tuple[str, ...] = ("efficientnet_lite0",)
#: A fine-tuned backbone's key is ``<base>+ft<id>`` (e.g. ``efficientnet_lite0+ft3f9a2c1b``):
#: its CNN cache rows and vectors are its own, apart from the frozen base's.
TUNED_MARK = "+ft"


def base_backbone(key: str) -> str:
    """The ImageNet backbone a (possibly fine-tuned) backbone key starts from."""
    return key.split(TUNED_MARK, 1)[0]


def is_tuned(key: str) -> bool:
    """Whether ``key`` names a fine-tuned backbone (``<base>+ft<id>``)."""
    return TUNED_MARK in key


def pooled_dim(key: str) -> int:
    """Length of the pooled feature of a (possibly fine-tuned) backbone key."""
    return POOLED_DIMS[base_backbone(key)]


def tuned_weights_file(key: str) -> str:
    """Where a fine-tuned backbone's weights live, relative to ``RETRIEVAL_MODELS_DIR``."""
    return f"backbones/{key}.pt"


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

#: Defaults chosen by ``bench/colour_sweep.py`` on the shared catalogue (docs/benchmarks.md).
DEFAULT_COLOUR_VARIANT = "lab_mean"
DEFAULT_COLOUR_WEIGHT = 0.6
DEFAULT_NORMALIZE_DEEP = True

#: CNN precisions a feature extractor runs at (``RETRIEVAL_PRECISION`` also takes ``"auto"``:
#: fp16 autocast on CUDA, fp32 on CPU).
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")
PRECISION_CHOICES: tuple[str, ...] = ("auto", *PRECISIONS)

#: ``RETRIEVAL_RERANK``: ``"none"`` = the paper's ranking by fused distance, ``"category"`` =
#: the garments of the category the head predicts first (:mod:`retrieval.search.rerank`).
RERANK_MODES: tuple[str, ...] = ("none", "category")

#: ``RETRIEVAL_QUERY_CROP``, what a search photo is cropped to before the CNN (departures from
#: the paper, which runs it on the whole photo): ``"centre"`` (default) = the middle 80% of each
#: side, only where the photo's border is not plain (:mod:`retrieval.features.framing`);
#: ``"map"`` = the garment found on a first pass's activation map, run again
#: (:func:`retrieval.features.crop_box`); ``"off"`` = the whole photo.
QUERY_CROP_MODES: tuple[str, ...] = ("centre", "map", "off")
DEFAULT_QUERY_CROP = "centre"

#: Search modes: "fused" (the paper's fused feature), "deep" (the deep-only baseline), and
#: "exact" (fused, ranking the whole catalogue instead of the nearest cluster).
MODES: tuple[str, ...] = ("fused", "deep", "exact")
#: The modes a shopper (site, API) may choose.
SHOPPER_MODES: tuple[str, ...] = ("fused", "deep")
#: The list lengths the paper reports (P@5/10/20), offered to shoppers too.
TOPS: tuple[int, ...] = (5, 10, 20)
