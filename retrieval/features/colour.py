"""The colour feature (numpy only): salient positions of the conv map, the pooled RGB there, its
30-d encodings, and the fused vector.
"""

from __future__ import annotations

import numpy as np

from retrieval.spec import (
    COLOUR_VARIANTS,
    DEFAULT_COLOUR_VARIANT,
    DEFAULT_COLOUR_WEIGHT,
    DEFAULT_NORMALIZE_DEEP,
    NUM_POSITIONS,
)


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


#: Query-time crop (``FeatureExtractor.extract_query(crop="map")``): a cell belongs to the
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
