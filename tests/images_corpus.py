"""Untrusted image files, made in code (no binary fixtures): malformed, hostile and unusual ones.

Each generator returns the file's bytes. ``REFUSED`` lists what every upload path must answer
with a 4xx and a clear message; ``ACCEPTED`` lists real but unusual photos that a shop receives
(print-shop CMYK, 16-bit PNG, a PNG saved as .jpg, animated GIF/WebP) and must accept.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image

from tests.factories import jpeg_bytes

SCRIPT = b"<script>alert(1)</script>"


def _save(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A few hundred bytes of valid PNG structure whose header declares width x height (RGB)."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    row = zlib.compress(b"\0" * (1 + 3 * min(width, 1000)))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", row) + chunk(b"IEND", b"")


def truncated_jpeg() -> bytes:
    data = jpeg_bytes(size=(400, 400), pattern=True)
    return data[: len(data) // 2]


def truncated_png() -> bytes:
    data = _save(Image.effect_noise((200, 200), 64).convert("RGB"), "PNG")
    return data[: len(data) // 2]


def cmyk_jpeg() -> bytes:
    """Pure red, as a print shop's CMYK JPEG."""
    return _save(Image.new("CMYK", (40, 30), (0, 255, 255, 0)), "JPEG", quality=95)


def png_16bit() -> bytes:
    """Mid grey in 16 bits per sample (Pillow mode I;16)."""
    return _save(Image.fromarray(np.full((30, 40), 32768, np.uint16)), "PNG")


def animated(fmt: str) -> bytes:
    """Two frames, red then blue: the first frame is the photo."""
    frames = [Image.new("RGB", (40, 30), colour) for colour in ((220, 20, 20), (20, 20, 220))]
    return _save(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)


def png_as_jpg() -> bytes:
    return _save(Image.new("RGB", (40, 30), (30, 160, 40)), "PNG")


def jpeg_with_script() -> bytes:
    """A real JPEG carrying script: in its comment and as an HTML page appended after its end."""
    image = _save(Image.new("RGB", (40, 30), (200, 30, 30)), "JPEG", comment=SCRIPT)
    return image + b"<html><body>" + SCRIPT + b"</body></html>"


SVG = (
    b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="40" height="30" '
    b'onload="alert(1)"><rect width="40" height="30" fill="red"/>' + SCRIPT + b"</svg>\n"
)
HTML = b"<!doctype html><html><body><h1>Sale</h1>" + SCRIPT + b"</body></html>\n"
PDF = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\ntrailer\n<<>>\n%%EOF\n"


@dataclass(frozen=True)
class Case:
    name: str  # the uploaded file's name
    data: bytes
    content_type: str
    messages: tuple[str, ...] = ()  # one of these is in the answer (refused files)
    too_large: bool = False  # refused as too large: HTTP 413 where the channel has it
    colour: tuple[int, int, int] | None = None  # accepted files: the stored photo's colour


NOT_AN_IMAGE = ("not an image",)
EMPTY = ("empty", "blank")  # Django/DRF: "The submitted file is empty."; JSON: "may not be blank"

REFUSED: dict[str, Case] = {
    "zero-bytes": Case("empty.jpg", b"", "image/jpeg", EMPTY),
    "truncated-jpeg": Case("cut.jpg", truncated_jpeg(), "image/jpeg", ("truncated",)),
    "truncated-png": Case("cut.png", truncated_png(), "image/png", ("truncated",)),
    "bomb": Case("bomb.png", png_claiming(100_000, 100_000), "image/png", ("too large",), True),
    # 48 MP: over RETRIEVAL_MAX_PIXELS (40 MP), under Pillow's own bomb threshold (179 MP).
    "huge": Case("huge.png", png_claiming(8000, 6000), "image/png", ("too large",), True),
    "text-named-jpg": Case("notes.jpg", b"size M, red\n" * 20, "image/jpeg", NOT_AN_IMAGE),
    "svg": Case("logo.svg", SVG, "image/svg+xml", NOT_AN_IMAGE),
    "html": Case("page.html", HTML, "text/html", NOT_AN_IMAGE),
    "html-named-jpg": Case("photo.jpg", HTML, "image/jpeg", NOT_AN_IMAGE),
    "pdf": Case("catalogue.pdf", PDF, "application/pdf", NOT_AN_IMAGE),
}

ACCEPTED: dict[str, Case] = {
    "cmyk-jpeg": Case("print.jpg", cmyk_jpeg(), "image/jpeg", colour=(255, 0, 0)),
    "16-bit-png": Case("scan.png", png_16bit(), "image/png", colour=(128, 128, 128)),
    "png-named-jpg": Case("photo.jpg", png_as_jpg(), "image/jpeg", colour=(30, 160, 40)),
    "animated-gif": Case("spin.gif", animated("GIF"), "image/gif", colour=(220, 20, 20)),
    "animated-webp": Case("spin.webp", animated("WEBP"), "image/webp", colour=(220, 20, 20)),
    "jpeg-with-script": Case("tee.jpg", jpeg_with_script(), "image/jpeg", colour=(200, 30, 30)),
}


def assert_clean_jpeg(data: bytes, *, colour: tuple[int, int, int] | None = None) -> None:
    """What the site stores and serves: a plain RGB JPEG with no metadata and no markup."""
    assert data[:3] == b"\xff\xd8\xff"
    assert b"<script" not in data.lower() and b"<html" not in data.lower()
    image = Image.open(io.BytesIO(data))
    assert image.format == "JPEG" and image.mode == "RGB"
    assert not {"exif", "comment", "icc_profile", "xmp"} & set(image.info)
    image.load()  # decodes completely (no trailing junk or truncation)
    if colour is not None:
        centre = image.getpixel((image.width // 2, image.height // 2))
        assert all(abs(a - b) <= 6 for a, b in zip(centre, colour, strict=True)), centre


CSV_HEADER = (
    "id,image,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,"
    "productDisplayName\n"
)


def catalogue_zip(path, rows: list[tuple[str, str, str]], images: dict[str, bytes]):
    """A catalogue in the sample's format: rows of (sku, articleType, productDisplayName);
    ``images`` maps a sku to its image bytes (images/<sku>.jpg). CSV quoting is done here, so
    titles may hold anything."""
    import csv
    import zipfile

    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    for sku, category, title in rows:
        writer.writerow([sku, f"{sku}.jpg", "Men", "Apparel", "Topwear", category, "Red",
                         "Summer", "2012", "Casual", title])  # fmt: skip
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("styles.csv", CSV_HEADER + text.getvalue())
        for sku, data in images.items():
            archive.writestr(f"images/{sku}.jpg", data)
    return path
