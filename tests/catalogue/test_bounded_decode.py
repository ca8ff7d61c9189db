"""A huge upload is decoded downscaled (JPEG DCT scaling, then an integer reduce), so a web
worker never holds a 40 MP photo's pixels (issue #17, point 11); a truncated one is still
refused. Peak memory figures: bench/bench_upload_memory.py, docs/benchmarks.md."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from retrieval import catalogue
from retrieval.images import DECODE_MAX_SIDE, ImageError


def photo(width: int, height: int, fmt: str = "JPEG") -> bytes:
    rng = np.random.default_rng(width)
    pixels = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, fmt, **({"quality": 80} if fmt == "JPEG" else {}))
    return out.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_a_large_upload_is_decoded_to_a_bounded_size(settings, fmt):
    settings.RETRIEVAL_MAX_UPLOAD_BYTES = 200 * 1024 * 1024
    decoded = catalogue.decode_upload(photo(6000, 4000, fmt), name="big")
    assert decoded.mode == "RGB"
    assert DECODE_MAX_SIDE // 2 <= max(decoded.size) <= DECODE_MAX_SIDE
    # The aspect ratio is kept (within a pixel of rounding).
    assert abs(decoded.size[0] / decoded.size[1] - 1.5) < 0.01


def test_a_small_upload_keeps_its_size():
    assert catalogue.decode_upload(photo(900, 600)).size == (900, 600)


def test_a_truncated_large_jpeg_is_still_refused(settings):
    settings.RETRIEVAL_MAX_UPLOAD_BYTES = 200 * 1024 * 1024
    data = photo(6000, 4000)
    with pytest.raises(ImageError, match="truncated"):
        catalogue.decode_upload(data[: len(data) // 2])
