"""Query-time centre crop for shoppers' snapshots (issue #14; numpy only).

A departure from the paper, which runs the CNN on the whole photo: shoppers frame the garment
in the middle of the photo with floor, bed or carpet around it, so keeping the middle 80% of
each side (:data:`CENTRE_BOX`) raised shoppers' p@5 from 0.809 to 0.837 (docs/benchmarks.md,
"Lever 4"). A studio shot's garment fills the frame, and the same crop cost studio photos 1.6
points (0.858 -> 0.842), so only photos whose border is *not* plain are cropped
(:func:`border_is_plain`): with that rule shoppers' p@5 was 0.835 and studio p@5 unchanged.

The rule: at least :data:`BORDER_MIN_FRACTION` (80%) of the pixels of a
:data:`BORDER_WIDTH`-pixel (3) frame lie within RGB (Euclidean, 0..255) distance
:data:`BORDER_TOLERANCE` (26) of the frame's per-channel median colour. Measured
(``bench/shopper_plain_border.py``) on photos at most :data:`RULE_MAX_SIDE` pixels long (the
shoppers' photos, 256 px, and the catalogue's, 60x80): it leaves 10 of 806 held-out studio
photos cropped and 82 of 989 shoppers' photos plain. :meth:`FeatureExtractor.extract_query
<retrieval.features.FeatureExtractor.extract_query>` reduces a larger decoded photo (box average
by an integer factor) to at most that size before it reads the frame, so a phone's 4000 px photo
is judged at the resolution the rule was measured at.
"""

from __future__ import annotations

import numpy as np

#: The centre box kept for a photo whose border is not plain: (left, top, right, bottom) as
#: fractions of the width and height (10% off each side).
CENTRE_BOX: tuple[float, float, float, float] = (0.1, 0.1, 0.9, 0.9)

#: Width in pixels of the frame the rule reads.
BORDER_WIDTH = 3

#: A frame pixel is "plain" when its RGB distance (0..255 per channel) to the frame's median
#: colour is below this.
BORDER_TOLERANCE = 26.0

#: A border is plain when at least this fraction of its frame's pixels are plain.
BORDER_MIN_FRACTION = 0.8

#: The rule is read on the photo reduced to at most this many pixels on its longer side (the
#: resolution it was measured at).
RULE_MAX_SIDE = 256


def border_frame(rgb: np.ndarray, *, width: int = BORDER_WIDTH) -> np.ndarray:
    """The pixels of the photo's outer frame.

    Args:
        rgb: ``(H, W, 3)`` uint8 (or float 0..255) RGB.
        width: frame width in pixels.

    Returns:
        ``(P, 3)`` float32: the top and bottom ``width`` rows and the left and right ``width``
        columns (corner pixels counted twice, as in the measured rule).
    """
    a = np.asarray(rgb)
    if a.ndim != 3 or a.shape[2] != 3 or a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f"expected an (H, W, 3) RGB array, got shape {a.shape}")
    return np.concatenate(
        [
            a[:width].reshape(-1, 3),
            a[-width:].reshape(-1, 3),
            a[:, :width].reshape(-1, 3),
            a[:, -width:].reshape(-1, 3),
        ]
    ).astype(np.float32)


def border_fraction(
    rgb: np.ndarray, *, width: int = BORDER_WIDTH, tolerance: float = BORDER_TOLERANCE
) -> float:
    """Fraction (0..1) of the frame's pixels within ``tolerance`` of the frame's median colour
    (1.0 = a uniform border).

    Args:
        rgb: ``(H, W, 3)`` uint8 RGB.
    """
    frame = border_frame(rgb, width=width)
    median = np.median(frame, axis=0)
    distance = np.sqrt(((frame - median) ** 2).sum(axis=1))
    return float((distance < tolerance).mean())


def border_is_plain(
    rgb: np.ndarray,
    *,
    min_fraction: float = BORDER_MIN_FRACTION,
    width: int = BORDER_WIDTH,
    tolerance: float = BORDER_TOLERANCE,
) -> bool:
    """Whether the photo's border is plain (a studio shot on a uniform ground): such photos are
    not centre-cropped.

    Args:
        rgb: ``(H, W, 3)`` uint8 RGB, at most :data:`RULE_MAX_SIDE` pixels on its longer side
            for the measured behaviour (see the module's docstring).
    """
    return border_fraction(rgb, width=width, tolerance=tolerance) >= min_fraction


def box_pixels(
    size: tuple[int, int], box: tuple[float, float, float, float]
) -> tuple[int, int, int, int]:
    """A fractional box ``(left, top, right, bottom)`` as pixel bounds of an image of ``size``
    ``(width, height)``, at least one pixel wide and high (PIL's ``crop`` order)."""
    w, h = size
    left, top, right, bottom = box
    x0, y0 = int(left * w), int(top * h)
    return (x0, y0, max(x0 + 1, round(right * w)), max(y0 + 1, round(bottom * h)))
