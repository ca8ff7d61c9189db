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


EXAMPLES_HEADER = HEADER.rstrip("\n") + ",sender\n"


def example_row(key, category="Tshirts", sender="", image=None):
    """A shoppers' photo line (the shared shopper-photos.zip's format: a sender column)."""
    image = image or f"images/{key}.jpg"
    return f"{key},{image},,Apparel,,{category},,,,,shopper photo {key},{sender}\n"


def make_examples(path, rows: str, images: dict[str, bytes]):
    """A zip of labelled example photos: styles.csv with a sender column, images/."""
    return make_catalogue(path, "", images, csv_bytes=(EXAMPLES_HEADER + rows).encode())


def examples_from_garments(path, photos):
    """A zip of example photos made of catalogue garments' images: ``photos`` is
    ``[(key, garment, sender)]`` or ``[(key, garment, sender, category)]`` (default: the
    garment's category)."""
    lines, images = [], {}
    for key, garment, sender, *category in photos:
        with garment.image.open("rb") as handle:
            images[f"{key}.jpg"] = handle.read()
        lines.append(example_row(key, category[0] if category else garment.category.name, sender))
    return make_examples(path, "".join(lines), images)
