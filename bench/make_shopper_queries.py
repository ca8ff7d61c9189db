"""Build a "shoppers' photos" query set: held-out garments made to look unlike studio shots.

For ``manage.py evaluate --queries OUT.zip`` (robustness to shoppers' own photos, issue #7).
The catalogue's photos are studio shots: one garment, centred, filling the frame, on white.
Each query here is a garment that is NOT in the catalogue (the first ``--catalogue-limit``
rows the import takes, read with the import's own reader), of a category the catalogue holds,
re-photographed synthetically:

1. garment separated from the white background (near-white, low-chroma pixels connected to the
   border), edges feathered;
2. pasted on a cluttered background: a procedural texture (stripes, checks, plaid, dots), coloured
   multi-scale noise, a "scene" collaged from unrelated product photos (non-garment
   masterCategories, out of focus), or a two-tone room with furniture blocks;
3. random scale (35-85% of the frame height), offset (partly out of frame allowed), rotation
   (+-25 degrees), perspective (corners moved up to 12%), a soft drop shadow;
4. partial occlusion (a hand-coloured blob or a patch of another texture over 8-25% of the
   garment) on about half of the photos;
5. lighting: global exposure, a directional light gradient, white balance (tungsten,
   fluorescent, shade) and gamma;
6. defocus or motion blur, sensor noise, and JPEG compression at quality 30-75.

Not simulated (limits of a synthetic set): garments worn on a body (folds, pose, skin around
them), true 3-D lighting and real camera optics. The output is in the import format (styles.csv
with the source's columns and labels + images/<id>.jpg) and byte-for-byte deterministic for a
given seed (per-image generators seeded from the seed and the garment id; fixed zip dates).

Usage::

    .venv/bin/python bench/make_shopper_queries.py --out var/shopper-queries.zip \\
        --catalogue-limit 3000 --n 300 --seed 0
"""

from __future__ import annotations

import argparse
import collections
import csv
import io
import os
import sys
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from scipy import ndimage

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from retrieval.catalogue.source import CatalogRow, CatalogSource, read_rows  # noqa: E402

DEFAULT_ZIP = os.path.join(REPO, "..", "shared", "data", "fashion-product-images-small.zip")
#: Output photo size (width, height): a phone's 3:4 portrait frame.
SIZE = (300, 400)
#: masterCategories whose photos make the "unrelated" scene backgrounds.
SCENE_SOURCES = ("Personal Care", "Home", "Free Items", "Sporting Goods")
BACKGROUNDS = ("texture", "noise", "scene", "room")
ZIP_DATE = (2026, 1, 1, 0, 0, 0)


# --------------------------------------------------------------------------- garment cut-out


def garment_mask(photo: Image.Image) -> Image.Image:
    """Alpha mask ``L`` of the garment in a studio photo on white (255 = garment).

    Background = near-white, low-chroma pixels connected to the border; holes inside the garment
    are filled; edges feathered. Falls back to the whole frame when almost nothing is left (a
    white garment on white).
    """
    a = np.asarray(photo.convert("RGB"), dtype=np.int16)
    whiteish = (a.min(axis=2) > 228) & ((a.max(axis=2) - a.min(axis=2)) < 20)
    labels, _ = ndimage.label(whiteish)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    background = np.isin(labels, border[border > 0])
    garment = ndimage.binary_fill_holes(ndimage.binary_opening(~background, iterations=1))
    if garment.mean() < 0.04:
        garment = np.ones_like(garment)
    mask = Image.fromarray((garment * 255).astype(np.uint8), "L")
    return mask.filter(ImageFilter.GaussianBlur(0.7))


def perspective_coefficients(src: list, dst: list) -> list[float]:
    """PIL PERSPECTIVE coefficients mapping output points ``dst`` to input points ``src``."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(dst, src, strict=True):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        rhs += [u, v]
    return np.linalg.solve(np.asarray(rows, float), np.asarray(rhs, float)).tolist()


def transform_garment(rgba: Image.Image, rng: np.random.Generator, frame_h: int) -> Image.Image:
    """Scale, perspective and rotation of the cut-out garment (RGBA)."""
    scale = rng.uniform(0.35, 0.85) * frame_h / rgba.height
    w, h = max(8, round(rgba.width * scale)), max(8, round(rgba.height * scale))
    rgba = rgba.resize((w, h), Image.Resampling.BICUBIC)
    jitter = 0.12
    corners = [(0, 0), (w, 0), (w, h), (0, h)]
    moved = [
        (x + rng.uniform(-jitter, jitter) * w, y + rng.uniform(-jitter, jitter) * h)
        for x, y in corners
    ]
    xs, ys = [p[0] for p in moved], [p[1] for p in moved]
    shifted = [(x - min(xs), y - min(ys)) for x, y in moved]
    size = (round(max(xs) - min(xs)), round(max(ys) - min(ys)))
    rgba = rgba.transform(
        size,
        Image.Transform.PERSPECTIVE,
        perspective_coefficients(corners, shifted),
        Image.Resampling.BICUBIC,
    )
    return rgba.rotate(rng.uniform(-25, 25), Image.Resampling.BICUBIC, expand=True)


# --------------------------------------------------------------------------- backgrounds


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(0, 256, 3))


def texture_background(rng: np.random.Generator, size=SIZE) -> Image.Image:
    """Stripes, checks, plaid or dots in random colours, at a random angle."""
    w, h = size
    big = Image.new("RGB", (2 * w, 2 * h), _colour(rng))
    draw = ImageDraw.Draw(big)
    kind = rng.choice(["stripes", "checks", "plaid", "dots"])
    step = int(rng.integers(8, 40))
    colours = [_colour(rng) for _ in range(3)]
    if kind in ("stripes", "plaid"):
        for i, x in enumerate(range(0, 2 * w, step)):
            draw.rectangle([x, 0, x + step // 2, 2 * h], fill=colours[i % 2])
    if kind == "plaid":
        for i, y in enumerate(range(0, 2 * h, step + 5)):
            draw.rectangle([0, y, 2 * w, y + step // 3], fill=colours[1 + i % 2])
    if kind == "checks":
        for x in range(0, 2 * w, step):
            for y in range(0, 2 * h, step):
                if (x // step + y // step) % 2:
                    draw.rectangle([x, y, x + step, y + step], fill=colours[0])
    if kind == "dots":
        for _ in range(int(rng.integers(60, 200))):
            x, y, r = rng.integers(0, 2 * w), rng.integers(0, 2 * h), rng.integers(3, 18)
            draw.ellipse([x - r, y - r, x + r, y + r], fill=colours[int(rng.integers(0, 3))])
    big = big.rotate(rng.uniform(0, 180), Image.Resampling.BILINEAR)
    left, top = w // 2, h // 2
    return big.crop((left, top, left + w, top + h)).filter(
        ImageFilter.GaussianBlur(rng.uniform(0, 1.5))
    )


def noise_background(rng: np.random.Generator, size=SIZE) -> Image.Image:
    """Coloured multi-scale value noise (a blotchy, busy surface)."""
    w, h = size
    field = np.zeros((h, w, 3))
    for cells, weight in ((4, 1.0), (12, 0.5), (40, 0.25), (120, 0.12)):
        grid = rng.random((cells * h // w + 1, cells, 3))
        up = Image.fromarray((grid * 255).astype(np.uint8), "RGB").resize(
            (w, h), Image.Resampling.BICUBIC
        )
        field += weight * np.asarray(up, float)
    field /= 1.87
    tint = rng.uniform(0.5, 1.2, 3)
    out = np.clip(field * tint + rng.uniform(-40, 40, 3), 0, 255)
    return Image.fromarray(out.astype(np.uint8), "RGB")


def scene_background(rng: np.random.Generator, props: list[Image.Image], size=SIZE) -> Image.Image:
    """A collage of unrelated product photos over a gradient, out of focus."""
    w, h = size
    top, bottom = np.asarray(_colour(rng), float), np.asarray(_colour(rng), float)
    ramp = np.linspace(0, 1, h)[:, None, None]
    base = (top * (1 - ramp) + bottom * ramp) * np.ones((h, w, 3))
    canvas = Image.fromarray(base.astype(np.uint8), "RGB")
    for _ in range(int(rng.integers(6, 13))):
        prop = props[int(rng.integers(0, len(props)))]
        scale = rng.uniform(1.0, 4.0)
        prop = prop.resize(
            (max(4, int(prop.width * scale)), max(4, int(prop.height * scale))),
            Image.Resampling.BILINEAR,
        ).rotate(rng.uniform(-40, 40), expand=True, fillcolor=_colour(rng))
        x = int(rng.integers(-prop.width // 2, w))
        y = int(rng.integers(-prop.height // 2, h))
        canvas.paste(prop, (x, y))
    return canvas.filter(ImageFilter.GaussianBlur(rng.uniform(1.0, 3.5)))


def room_background(rng: np.random.Generator, size=SIZE) -> Image.Image:
    """A wall and a floor with a few furniture-like blocks."""
    w, h = size
    canvas = Image.new("RGB", size, _colour(rng))
    draw = ImageDraw.Draw(canvas)
    horizon = int(rng.uniform(0.45, 0.8) * h)
    draw.rectangle([0, horizon, w, h], fill=_colour(rng))
    for _ in range(int(rng.integers(2, 6))):
        x0, y0 = int(rng.integers(-50, w)), int(rng.integers(0, h))
        draw.rectangle(
            [x0, y0, x0 + int(rng.integers(30, 160)), y0 + int(rng.integers(30, 200))],
            fill=_colour(rng),
        )
    return canvas.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 2.5)))


# --------------------------------------------------------------------------- camera


def light_and_camera(photo: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Exposure, directional light, white balance, gamma, blur and sensor noise."""
    a = np.asarray(photo, float) / 255.0
    h, w = a.shape[:2]
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w]
    ramp = ((xx / w - 0.5) * np.cos(angle) + (yy / h - 0.5) * np.sin(angle)) + 0.5
    low, high = rng.uniform(0.5, 0.9), rng.uniform(1.0, 1.3)
    a = a * (low + (high - low) * ramp)[..., None] * rng.uniform(0.75, 1.15)
    balance = {
        "neutral": (1.0, 1.0, 1.0),
        "tungsten": (1.15, 1.0, 0.72),
        "fluorescent": (0.95, 1.08, 0.93),
        "shade": (0.85, 0.97, 1.15),
    }[str(rng.choice(["neutral", "tungsten", "fluorescent", "shade"]))]
    a = a * np.asarray(balance) * rng.uniform(0.95, 1.05, 3)
    a = np.clip(a, 0, 1) ** rng.uniform(0.8, 1.25)
    out = Image.fromarray((a * 255).astype(np.uint8), "RGB")
    blur = rng.random()
    if blur < 0.45:
        out = out.filter(ImageFilter.GaussianBlur(rng.uniform(0.4, 1.8)))
    elif blur < 0.7:
        n = 5
        kernel = np.zeros((n, n))
        kernel[n // 2] = 1.0  # horizontal streak, rotated below
        kernel = ndimage.rotate(kernel, rng.uniform(0, 180), reshape=False, order=1)
        kernel = np.clip(kernel, 0, None)
        kernel /= kernel.sum()
        out = out.filter(ImageFilter.Kernel((n, n), kernel.flatten().tolist(), 1))
    noisy = np.asarray(out, float) + rng.normal(0, rng.uniform(2, 10), (h, w, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")


def occlude(canvas: Image.Image, box, rng: np.random.Generator) -> None:
    """A hand-coloured blob or a texture patch over part of the garment's box (in place)."""
    x0, y0, x1, y1 = box
    bw, bh = max(1, x1 - x0), max(1, y1 - y0)
    area = rng.uniform(0.08, 0.25) * bw * bh
    ow = int(np.sqrt(area * rng.uniform(0.5, 2.0)))
    oh = int(area / max(1, ow))
    cx = int(rng.uniform(x0, x1))
    cy = int(rng.uniform(y0, y1))
    mask = Image.new("L", canvas.size, 0)
    ImageDraw.Draw(mask).ellipse([cx - ow // 2, cy - oh // 2, cx + ow // 2, cy + oh // 2], 255)
    if rng.random() < 0.5:
        skin = (
            int(rng.integers(150, 240)),
            int(rng.integers(100, 190)),
            int(rng.integers(80, 160)),
        )
        patch = Image.new("RGB", canvas.size, skin)
    else:
        patch = texture_background(rng, canvas.size)
    canvas.paste(patch, (0, 0), mask.filter(ImageFilter.GaussianBlur(1.5)))


def shopper_photo(
    garment: Image.Image, rng: np.random.Generator, props: list[Image.Image]
) -> tuple[bytes, str]:
    """One synthetic shopper's photo (JPEG bytes) of a studio garment photo, and its background
    kind."""
    w, h = SIZE
    kind = str(rng.choice(BACKGROUNDS))
    if kind == "texture":
        canvas = texture_background(rng)
    elif kind == "noise":
        canvas = noise_background(rng)
    elif kind == "scene":
        canvas = scene_background(rng, props)
    else:
        canvas = room_background(rng)
    rgba = garment.convert("RGB").copy()
    rgba.putalpha(garment_mask(garment))
    rgba = transform_garment(rgba, rng, h)
    gw, gh = rgba.size
    # Mostly inside the frame: at most 15% of the garment's width/height outside it.
    x = int(rng.uniform(-0.15 * gw, max(-0.15 * gw + 1, w - 0.85 * gw)))
    y = int(rng.uniform(-0.15 * gh, max(-0.15 * gh + 1, h - 0.85 * gh)))
    alpha = rgba.getchannel("A")
    shadow = Image.new("RGB", rgba.size, (0, 0, 0))
    shadow_alpha = alpha.point(lambda v: int(v * 0.35)).filter(ImageFilter.GaussianBlur(6))
    dx, dy = int(rng.integers(-12, 13)), int(rng.integers(4, 16))
    canvas.paste(shadow, (x + dx, y + dy), shadow_alpha)
    canvas.paste(rgba.convert("RGB"), (x, y), alpha)
    if rng.random() < 0.5:
        occlude(canvas, (max(0, x), max(0, y), min(w, x + gw), min(h, y + gh)), rng)
    photo = light_and_camera(canvas, rng)
    out = io.BytesIO()
    photo.save(out, "JPEG", quality=int(rng.integers(30, 76)))
    return out.getvalue(), kind


# --------------------------------------------------------------------------- the set


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--zip", default=DEFAULT_ZIP, help="The catalogue sample zip.")
    parser.add_argument("--out", required=True, help="Query zip to write.")
    parser.add_argument(
        "--catalogue-limit",
        type=int,
        default=3000,
        help="The catalogue = the first N rows import_catalog --limit N takes; queries are "
        "drawn from the other rows.",
    )
    parser.add_argument("--category-field", default="articleType")
    parser.add_argument("--n", type=int, default=300, help="Number of query photos.")
    parser.add_argument(
        "--min-catalogue",
        type=int,
        default=10,
        help="Only categories with at least this many catalogue garments (so p@5 can be 1).",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--samples", default="", help="Folder to save the first 24 photos.")
    args = parser.parse_args(argv)

    limits = {"max_file_bytes": 50 * 1024 * 1024, "max_total_bytes": 8 * 1024**3}
    with CatalogSource(Path(args.zip), **limits) as source:
        rows = [
            r
            for r in read_rows(source, category_field=args.category_field)
            if isinstance(r, CatalogRow)
        ]
        catalogue = rows[: args.catalogue_limit]
        in_catalogue = {r.sku for r in catalogue}
        counts = collections.Counter(r.category for r in catalogue)
        held_out = [r for r in rows[args.catalogue_limit :] if r.sku not in in_catalogue]
        garments = [
            r
            for r in held_out
            if counts[r.category] >= args.min_catalogue
            and r.attributes.get("masterCategory") not in SCENE_SOURCES
        ]
        by_category: dict[str, list[CatalogRow]] = collections.defaultdict(list)
        for r in garments:
            by_category[r.category].append(r)
        rng = np.random.default_rng(args.seed)
        for members in by_category.values():
            rng.shuffle(members)
        # Round-robin over categories (sorted): every category gets queries, big ones more.
        picked: list[CatalogRow] = []
        depth = 0
        while len(picked) < args.n and any(len(m) > depth for m in by_category.values()):
            for name in sorted(by_category):
                if len(by_category[name]) > depth and len(picked) < args.n:
                    picked.append(by_category[name][depth])
            depth += 1
        scene_rows = [r for r in held_out if r.attributes.get("masterCategory") in SCENE_SOURCES]
        scene_rows = [scene_rows[i] for i in rng.permutation(len(scene_rows))[:200]]
        props = [
            Image.open(io.BytesIO(source.read(r.image))).convert("RGB") for r in scene_rows
        ] or [Image.new("RGB", (60, 80), (128, 128, 128))]

        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        tmp = args.out + ".tmp"
        kinds = collections.Counter()
        header = ["id", "image", "gender", "masterCategory", "subCategory", "articleType",
                  "baseColour", "season", "year", "usage", "productDisplayName"]  # fmt: skip
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(header)
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as out:
            for number, row in enumerate(sorted(picked, key=lambda r: int(r.sku))):
                photo_rng = np.random.default_rng([args.seed, int(row.sku)])
                garment = Image.open(io.BytesIO(source.read(row.image))).convert("RGB")
                data, kind = shopper_photo(garment, photo_rng, props)
                kinds[kind] += 1
                name = f"images/{row.sku}.jpg"
                out.writestr(zipfile.ZipInfo(name, ZIP_DATE), data)
                values = {**row.attributes, "id": row.sku, "image": name}
                values["productDisplayName"] = row.title
                writer.writerow([values.get(column, "") for column in header])
                if args.samples and number < 24:
                    os.makedirs(args.samples, exist_ok=True)
                    with open(os.path.join(args.samples, f"{row.sku}.jpg"), "wb") as handle:
                        handle.write(data)
            out.writestr(zipfile.ZipInfo("styles.csv", ZIP_DATE), text.getvalue())
        os.replace(tmp, args.out)
    per_category = collections.Counter(r.category for r in picked)
    print(
        f"wrote {args.out}: {len(picked)} photos of {len(per_category)} categories "
        f"(held out from the first {args.catalogue_limit} rows); backgrounds {dict(kinds)}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
