"""Studio shot -> "photographed at home" training photo (issue #14: shoppers' photos).

A training-time augmentation, unlike ``bench/make_shopper_queries.py`` (a synthetic *query*
set with wild textures, coloured noise, collages and small, rotated garments). What real
shoppers send (``shared/data/shopper-photos.zip``): a garment laid flat on a bed, a carpet, a
wooden or tiled floor, or on a hanger against a wall or door, filling most of a phone's 3:4
frame, in warm or cool home light, slightly blurred and JPEG-compressed. So here:

1. the garment is cut out of the white studio background (``make_shopper_queries.garment_mask``);
2. pasted on a procedural *home* surface: wood planks, carpet / rug (fine noise, optional
   pattern border), bed sheet (light cloth with soft folds), floor tiles, or a painted wall /
   door with a hanger hook drawn above the garment; neutral, desaturated colours;
3. garment height 55-100% of the frame (a flat lay fills it), small rotation (+-12 degrees),
   mild perspective (corners up to 8%), optional crop (part of the garment out of frame);
4. a soft contact shadow; home light (exposure, a light gradient, tungsten / daylight / shade
   white balance, gamma), then defocus blur, sensor noise and JPEG (quality 40-90).

Deterministic for a ``numpy.random.Generator``. Output: an RGB ``PIL.Image`` of 240x320 (or
the JPEG bytes with :func:`home_photo_jpeg`). Pure numpy/PIL/scipy, no torch: it can run in
DataLoader workers.

Meant to move to ``retrieval/training`` (with ``garment_mask``) once that package exists.
"""

from __future__ import annotations

import io
import os
import sys

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from make_shopper_queries import perspective_coefficients
from scipy import ndimage


def garment_mask(photo: Image.Image, tolerance: float = 26.0) -> Image.Image:
    """Alpha mask ``L`` (255 = garment) of a studio photo on a plain background.

    Like ``make_shopper_queries.garment_mask`` but the background colour is the median of the
    border pixels (many catalogue shots are on light grey, not white): background = pixels
    within ``tolerance`` (RGB distance) of it, connected to the border; holes filled.
    """
    a = np.asarray(photo.convert("RGB"), dtype=np.float32)
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    bg = np.median(border, axis=0)
    close = np.sqrt(((a - bg) ** 2).sum(axis=2)) < tolerance
    labels, _ = ndimage.label(close)
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    background = np.isin(labels, edge[edge > 0])
    garment = ndimage.binary_fill_holes(ndimage.binary_opening(~background, iterations=1))
    if garment.mean() < 0.04 or garment.mean() > 0.97:
        garment = np.ones_like(garment)
    mask = Image.fromarray((garment * 255).astype(np.uint8), "L")
    return mask.filter(ImageFilter.GaussianBlur(0.7))


SIZE = (240, 320)  # 3:4; resized to 224x224 for the CNN anyway
SURFACES = ("wood", "carpet", "sheet", "tiles", "wall_hanger")


def _neutral(rng: np.random.Generator, lo: int = 60, hi: int = 235, chroma: float = 0.18):
    """A home surface colour: mostly grey/beige/brown, low saturation."""
    base = rng.uniform(lo, hi)
    tint = np.array([1.0, 0.93, 0.82]) if rng.random() < 0.6 else rng.uniform(0.8, 1.1, 3)
    col = base * (1 - chroma + chroma * tint) + rng.normal(0, 6, 3)
    return np.clip(col, 0, 255)


def _noise(rng, h, w, cells, amp):
    grid = rng.random((max(2, cells * h // w), max(2, cells)))
    up = Image.fromarray((grid * 255).astype(np.uint8), "L").resize((w, h), Image.BICUBIC)
    return (np.asarray(up, np.float32) / 255.0 - 0.5) * amp


def surface(kind: str, rng: np.random.Generator, size=SIZE) -> np.ndarray:
    """``(H, W, 3)`` float32 0..255 background of the given kind."""
    w, h = size
    base = _neutral(rng)
    a = np.ones((h, w, 3), np.float32) * base
    if kind == "wood":
        a = np.ones((h, w, 3), np.float32) * _neutral(rng, 70, 200, 0.45)
        plank = int(rng.integers(35, 90))
        vertical = rng.random() < 0.5
        coord = np.arange(w if vertical else h)
        idx = coord // plank
        shade = rng.normal(0, 14, idx.max() + 1)[idx]
        grain = _noise(rng, h, w, 120, 30) + _noise(rng, h, w, 8, 25)
        if vertical:
            a += shade[None, :, None] + grain[..., None]
            a[:, (coord % plank) < 2] *= 0.7
        else:
            a += shade[:, None, None] + grain[..., None]
            a[(coord % plank) < 2] *= 0.7
    elif kind == "carpet":
        fine = rng.normal(0, rng.uniform(6, 20), (h, w, 1))
        a += fine + _noise(rng, h, w, 20, 30)[..., None]
        if rng.random() < 0.4:  # a patterned rug
            accent = _neutral(rng, 40, 200, 0.6)
            yy, xx = np.mgrid[0:h, 0:w]
            step = int(rng.integers(20, 60))
            pattern = ((xx // step + yy // step) % 2 == 0) & (rng.random() < 0.5)
            pattern |= np.abs(np.sin(xx / step * 3) + np.cos(yy / step * 3)) < 0.3
            a[pattern] = a[pattern] * 0.4 + accent * 0.6
    elif kind == "sheet":
        a = np.ones((h, w, 3), np.float32) * _neutral(rng, 170, 250, 0.25)
        folds = _noise(rng, h, w, 4, 50) + _noise(rng, h, w, 10, 20)
        a += folds[..., None]
        if rng.random() < 0.3:  # striped or printed bedding
            stripe = int(rng.integers(10, 40))
            accent = _neutral(rng, 60, 220, 0.7)
            mask = (np.arange(w)[None, :] // stripe) % 2 == 0
            a[np.broadcast_to(mask, (h, w))] = a[np.broadcast_to(mask, (h, w))] * 0.6 + accent * 0.4
    elif kind == "tiles":
        tile = int(rng.integers(50, 140))
        yy, xx = np.mgrid[0:h, 0:w]
        grout = ((xx % tile) < 3) | ((yy % tile) < 3)
        a += _noise(rng, h, w, 30, 18)[..., None]
        a[grout] = a[grout] * 0.75
    else:  # wall_hanger: a painted wall or a door
        a += _noise(rng, h, w, 6, 20)[..., None]
        if rng.random() < 0.4:  # a door panel edge
            x0 = int(rng.integers(0, w))
            a[:, x0 : x0 + 4] *= 0.8
    return np.clip(a, 0, 255).astype(np.float32)


def _transform(rgba: Image.Image, rng, frame_h: int, fill: float) -> Image.Image:
    scale = fill * frame_h / rgba.height
    w, h = max(8, round(rgba.width * scale)), max(8, round(rgba.height * scale))
    rgba = rgba.resize((w, h), Image.BICUBIC)
    j = 0.08
    corners = [(0, 0), (w, 0), (w, h), (0, h)]
    moved = [(x + rng.uniform(-j, j) * w, y + rng.uniform(-j, j) * h) for x, y in corners]
    xs, ys = [p[0] for p in moved], [p[1] for p in moved]
    shifted = [(x - min(xs), y - min(ys)) for x, y in moved]
    size = (round(max(xs) - min(xs)), round(max(ys) - min(ys)))
    rgba = rgba.transform(
        size, Image.PERSPECTIVE, perspective_coefficients(corners, shifted), Image.BICUBIC
    )
    return rgba.rotate(rng.uniform(-12, 12), Image.BICUBIC, expand=True)


def _home_light(a: np.ndarray, rng) -> np.ndarray:
    h, w = a.shape[:2]
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w]
    ramp = ((xx / w - 0.5) * np.cos(angle) + (yy / h - 0.5) * np.sin(angle)) + 0.5
    low, high = rng.uniform(0.65, 0.95), rng.uniform(1.0, 1.15)
    a = a / 255.0 * (low + (high - low) * ramp)[..., None] * rng.uniform(0.8, 1.1)
    balance = [
        (1.0, 1.0, 1.0),
        (1.12, 1.0, 0.80),  # tungsten / warm LED
        (1.06, 1.0, 0.90),
        (0.92, 1.0, 1.10),  # shade / overcast window
    ][int(rng.integers(0, 4))]
    a = a * np.asarray(balance) * rng.uniform(0.97, 1.03, 3)
    return np.clip(a, 0, 1) ** rng.uniform(0.85, 1.2)


def home_photo(garment: Image.Image, rng: np.random.Generator) -> Image.Image:
    """One "at home" photo (RGB, 240x320) of a studio garment photo."""
    w, h = SIZE
    kind = SURFACES[int(rng.integers(0, len(SURFACES)))]
    canvas = surface(kind, rng)
    rgba = garment.convert("RGB").copy()
    rgba.putalpha(garment_mask(garment))
    fill = rng.uniform(0.55, 1.0)
    rgba = _transform(rgba, rng, h, fill)
    gw, gh = rgba.size
    if rng.random() < 0.25:  # cropped: the shopper framed it tight
        x = int(rng.uniform(-0.2 * gw, max(-0.2 * gw + 1, w - 0.8 * gw)))
        y = int(rng.uniform(-0.2 * gh, max(-0.2 * gh + 1, h - 0.8 * gh)))
    else:
        x = int((w - gw) / 2 + rng.uniform(-0.1, 0.1) * w)
        y = int((h - gh) / 2 + rng.uniform(-0.08, 0.08) * h)
    photo = Image.fromarray(canvas.astype(np.uint8), "RGB")
    if kind == "wall_hanger":  # hook + bar above the garment
        d = ImageDraw.Draw(photo)
        cx, top = x + gw // 2, max(0, y + int(0.02 * gh))
        col = tuple(int(v) for v in _neutral(rng, 20, 230, 0.5))
        d.line([(x + gw * 0.2, top), (cx, top - 18), (x + gw * 0.8, top)], fill=col, width=4)
        d.arc([cx - 8, top - 40, cx + 8, top - 16], 180, 360, fill=col, width=3)
    alpha = rgba.getchannel("A")
    shadow_alpha = alpha.point(lambda v: int(v * 0.3)).filter(ImageFilter.GaussianBlur(5))
    dx, dy = int(rng.integers(-6, 7)), int(rng.integers(2, 10))
    photo.paste(Image.new("RGB", rgba.size, (0, 0, 0)), (x + dx, y + dy), shadow_alpha)
    photo.paste(rgba.convert("RGB"), (x, y), alpha)
    a = _home_light(np.asarray(photo, np.float32), rng)
    out = Image.fromarray((a * 255).astype(np.uint8), "RGB")
    if rng.random() < 0.6:
        out = out.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.5)))
    noisy = np.asarray(out, np.float32) + rng.normal(0, rng.uniform(1, 6), (h, w, 3))
    out = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")
    buf = io.BytesIO()
    out.save(buf, "JPEG", quality=int(rng.integers(40, 91)))
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def home_photo_jpeg(garment: Image.Image, rng: np.random.Generator, quality: int = 90) -> bytes:
    out = io.BytesIO()
    home_photo(garment, rng).save(out, "JPEG", quality=quality)
    return out.getvalue()
