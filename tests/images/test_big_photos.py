"""Camera photos of 48-200 MP (issue #15): a search photo is decoded reduced (JPEG DCT
scaling), so the pixel limit applies to what is decoded; other uploads keep the full check."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from retrieval import catalogue, images


def jpeg(size: tuple[int, int], mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, (180, 40, 40) if mode == "RGB" else 120).save(out, "JPEG", quality=70)
    return out.getvalue()


def test_a_50_megapixel_jpeg_is_searchable_but_not_a_catalogue_photo(settings):
    settings.RETRIEVAL_MAX_PIXELS = 40_000_000
    data = jpeg((8160, 6120))  # 50 MP, a common camera mode
    with pytest.raises(images.ImageError, match="image too large: 8160x6120 pixels"):
        catalogue.decode_upload(data)
    photo = catalogue.decode_query_upload(data, name="IMG_50MP.jpg")
    assert photo.mode == "RGB" and photo.size == (2040, 1530)  # 1/4 scale, >= 1024 a side
    assert photo.getpixel((1000, 700)) == pytest.approx((180, 40, 40), abs=3)


@pytest.mark.slow
def test_a_200_megapixel_jpeg_beyond_pillows_own_limit_is_searchable(settings):
    settings.RETRIEVAL_MAX_PIXELS = 40_000_000
    data = jpeg((16320, 12240), mode="L")  # 200 MP: Pillow itself refuses over ~179 MP
    with pytest.raises(images.ImageError, match="image too large"):
        catalogue.decode_upload(data)
    photo = catalogue.decode_query_upload(data)
    assert photo.size == (2040, 1530) and photo.mode == "RGB"


def test_the_limit_still_holds_for_what_is_decoded(settings):
    # Reduced 1/8 at most: a JPEG whose eighth is over the limit is still refused.
    settings.RETRIEVAL_MAX_PIXELS = 100_000
    with pytest.raises(images.ImageError, match="image too large: 4000x3000 pixels"):
        catalogue.decode_query_upload(jpeg((4000, 3000)))  # 1/8 = 500 x 375 = 187,500 px
    # Formats that cannot be decoded reduced keep the check on their full size.
    png = io.BytesIO()
    Image.new("RGB", (400, 300)).save(png, "PNG")
    with pytest.raises(images.ImageError, match="image too large: 400x300 pixels"):
        catalogue.decode_query_upload(png.getvalue())
    # Not a JPEG at all: the ordinary refusal.
    with pytest.raises(images.ImageError, match="not an image"):
        catalogue.decode_query_upload(b"GIF89a not really" * 10)
