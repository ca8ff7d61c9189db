"""Catalogue zips made in code for import tests: ``styles.csv`` (the sample's columns) and
images under ``images/``, with rows and image bytes chosen by each test."""

from __future__ import annotations

import io
import zipfile

from PIL import Image

HEADER = (
    "id,image,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,"
    "productDisplayName\n"
)


def row(sku, category="Tshirts", colour="Red", title=None, image=None):
    image = image or f"{sku}.jpg"
    title = title or f"Tee {sku}"
    return f"{sku},{image},Men,Apparel,Topwear,{category},{colour},Summer,2012,Casual,{title}\n"


def png_bomb() -> bytes:
    """A tiny PNG that claims 30000 x 30000 pixels (900 MP): refused from its header."""
    buffer = io.BytesIO()
    Image.new("1", (30000, 30000)).save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


def make_catalogue(path, rows: str, images: dict[str, bytes], *, csv_bytes: bytes | None = None):
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("styles.csv", csv_bytes if csv_bytes is not None else HEADER + rows)
        for name, data in images.items():
            zf.writestr(f"images/{name}", data)
    return path
