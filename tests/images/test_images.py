"""retrieval.images: safe decoding of untrusted photos. Every input is generated here.

Plain pytest functions: no Django, no database.
"""

from __future__ import annotations

import io
import re
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms

from retrieval.images import (
    DEFAULT_MAX_PIXELS,
    ImageError,
    ZipMember,
    load_rgb224,
    open_image,
    pooled_grid,
    resize_rgb,
)


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height RGB pixels, with (almost) no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


def halves(size=(40, 20), left=(255, 0, 0), right=(0, 0, 255)) -> Image.Image:
    w, h = size
    arr = np.zeros((h, w, 3), np.uint8)
    arr[:, : w // 2] = left
    arr[:, w // 2 :] = right
    return Image.fromarray(arr)


# -- good inputs ------------------------------------------------------------------------------


def test_sources_path_bytes_filelike_callable(tmp_path: Path) -> None:
    data = encode(halves(), "PNG")
    path = tmp_path / "shirt.png"
    path.write_bytes(data)
    for source in (path, str(path), data, bytearray(data), io.BytesIO(data), lambda: data):
        img = open_image(source)
        assert img.mode == "RGB" and img.size == (40, 20)
        assert img.getpixel((0, 0)) == (255, 0, 0)
        assert img.getpixel((39, 0)) == (0, 0, 255)


def test_exif_orientation_is_applied() -> None:
    img = halves(size=(40, 20))  # red left, blue right, landscape
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    data = encode(img, "JPEG", quality=95, exif=exif.tobytes())
    out = open_image(data)
    assert out.size == (20, 40)  # portrait once upright
    arr = np.asarray(out).astype(int)
    # Rotating 90 clockwise puts the left (red) half on top.
    assert arr[2, 10, 0] > 200 and arr[2, 10, 2] < 60
    assert arr[37, 10, 2] > 200 and arr[37, 10, 0] < 60


def test_grey_and_palette_and_cmyk_become_rgb() -> None:
    grey = Image.new("L", (8, 8), 100)
    assert open_image(encode(grey, "PNG")).getpixel((0, 0)) == (100, 100, 100)
    one_bit = Image.new("1", (8, 8), 1)
    assert open_image(encode(one_bit, "PNG")).getpixel((0, 0)) == (255, 255, 255)
    pal = halves().convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    out = open_image(encode(pal, "PNG"))
    assert out.getpixel((0, 0)) == (255, 0, 0)
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # pure red in CMYK
    out = np.asarray(open_image(encode(cmyk, "JPEG", quality=95))).astype(int)
    assert out[8, 8, 0] > 200 and out[8, 8, 1] < 60 and out[8, 8, 2] < 60


def test_16_bit_grey_is_rescaled_not_clipped() -> None:
    arr = np.full((4, 4), 32896, np.uint16)  # 50% grey in 16 bits (= 128 * 257)
    arr[0, 0] = 65535
    img = Image.fromarray(arr)
    assert img.mode.startswith("I;16")
    out = np.asarray(open_image(encode(img, "PNG")))
    assert tuple(out[1, 1]) == (128, 128, 128)  # Pillow's convert() would clip to 255
    assert tuple(out[0, 0]) == (255, 255, 255)


def test_16_bit_rgb_png() -> None:
    h, w = 4, 4
    px = np.zeros((h, w, 3), ">u2")
    px[..., 0] = 65535
    px[..., 1] = 32896
    raw = b"".join(b"\x00" + px[y].tobytes() for y in range(h))
    data = (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
        + png_chunk(b"IDAT", zlib.compress(raw))
        + png_chunk(b"IEND", b"")
    )
    assert open_image(data).getpixel((0, 0)) == (255, 128, 0)


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_is_composited_on_white(mode: str) -> None:
    arr = np.zeros((10, 10, 4), np.uint8)  # transparent black everywhere...
    arr[:5, :, :] = (255, 0, 0, 255)  # ...except an opaque red top half
    arr[5:, :5] = (0, 0, 0, 128)  # and half-transparent black bottom-left
    img = Image.fromarray(arr, "RGBA")
    if mode == "LA":
        img = img.convert("LA")
    out = np.asarray(open_image(encode(img, "PNG"))).astype(int)
    assert tuple(out[9, 9]) == (255, 255, 255)  # fully transparent -> white, not black
    assert abs(out[7, 2, 0] - 127) <= 2  # 50% black over white
    if mode == "RGBA":
        assert tuple(out[0, 0]) == (255, 0, 0)


def test_palette_transparency_gif_on_white() -> None:
    img = Image.new("P", (8, 8), 1)
    img.putpalette([0, 0, 0, 0, 255, 0] + [0] * (254 * 3))
    img.info["transparency"] = 1  # the green index is transparent
    out = open_image(encode(img, "GIF", transparency=1))
    assert out.getpixel((3, 3)) == (255, 255, 255)


def test_animated_gif_first_frame() -> None:
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    assert Image.open(io.BytesIO(data)).n_frames == 2
    r, g, b = open_image(data).getpixel((4, 4))
    assert r > 200 and b < 60


def test_animated_webp_first_frame() -> None:
    frames = [Image.new("RGB", (8, 8), c) for c in ((0, 255, 0), (0, 0, 255))]
    data = encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], lossless=True)
    assert open_image(data).getpixel((4, 4)) == (0, 255, 0)


def test_srgb_icc_profile_keeps_colours() -> None:
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    img = Image.new("RGB", (8, 8), (200, 30, 90))
    r, g, b = open_image(encode(img, "PNG", icc_profile=icc)).getpixel((1, 1))
    assert abs(r - 200) <= 2 and abs(g - 30) <= 2 and abs(b - 90) <= 2


def test_large_jpeg_uses_draft_and_keeps_enough_pixels() -> None:
    img = Image.new("RGB", (2000, 1500), (10, 120, 240))
    data = encode(img, "JPEG", quality=90)
    small = open_image(data, draft_size=(224, 224))
    assert min(small.size) >= 224 and small.size[0] < 2000  # decoded at a reduced scale
    arr = load_rgb224(data)
    assert arr.shape == (224, 224, 3) and arr.dtype == np.uint8
    assert np.abs(arr.astype(int) - (10, 120, 240)).max() <= 6


# -- bad inputs ------------------------------------------------------------------------------


def test_not_an_image_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("hello, I am not a photo")
    with pytest.raises(ImageError, match=r"^notes\.txt: that file is not an image") as info:
        open_image(path)
    assert info.value.name == "notes.txt"
    with pytest.raises(ImageError, match="not an image"):
        open_image(b"GIF89a but then garbage")


def test_eps_is_refused_without_running_ghostscript() -> None:
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    with pytest.raises(ImageError, match="not an image"):
        open_image(eps)


@pytest.mark.parametrize("kind", ["bytes", "path", "filelike"])
def test_empty_file(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    source = {"bytes": b"", "path": path, "filelike": io.BytesIO(b"")}[kind]
    with pytest.raises(ImageError, match="empty"):
        open_image(source)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match=r"gone\.jpg: file not found"):
        open_image(tmp_path / "gone.jpg")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "BMP", "TIFF"])
def test_truncated_file(fmt: str) -> None:
    rng = np.random.default_rng(0)
    noisy = Image.fromarray(rng.integers(0, 255, (128, 128, 3), dtype=np.uint8))
    data = encode(noisy, fmt)
    name = "upload." + fmt.lower()
    with pytest.raises(ImageError, match=rf"^{re.escape(name)}: the image file is truncated"):
        open_image(data[: len(data) // 2], name=name)


def test_corrupt_webp() -> None:
    data = encode(Image.new("RGB", (64, 64), (1, 2, 3)), "WEBP")
    with pytest.raises(ImageError, match=r"corrupt|truncated"):
        open_image(data[: len(data) // 2])


def test_decompression_bomb_refused_before_decoding() -> None:
    bomb = png_header_only(8000, 6000)  # 48 MP claimed, a few bytes of data
    assert len(bomb) < 200
    with pytest.raises(ImageError) as info:
        open_image(bomb, name="bomb.png")
    assert str(info.value) == (
        "bomb.png: image too large: 8000x6000 pixels exceeds the limit of 40000000 pixels"
    )
    assert info.value.reason.startswith("image too large")
    assert DEFAULT_MAX_PIXELS == 40_000_000


def test_pillow_bomb_error_is_ours_too() -> None:
    # Above 2 x Image.MAX_IMAGE_PIXELS Pillow itself raises inside Image.open.
    bomb = png_header_only(20000, 20000)
    with pytest.raises(ImageError) as info:
        open_image(bomb)
    assert str(info.value) == (
        "image too large: 400000000 pixels exceeds the limit of 40000000 pixels"
    )
    with pytest.raises(ImageError, match="image too large"):
        open_image(bomb, max_pixels=10**12)  # our limit lifted: Pillow's guard still holds


def test_small_limit() -> None:
    data = encode(Image.new("RGB", (100, 100)), "PNG")
    with pytest.raises(ImageError, match="100x100 pixels exceeds the limit of 5000"):
        open_image(data, max_pixels=5000)
    assert open_image(data, max_pixels=10000).size == (100, 100)


def test_image_error_is_value_error() -> None:
    assert issubclass(ImageError, ValueError)


# -- preprocessing ----------------------------------------------------------------------------


def test_resize_and_pooled_grid_against_loops() -> None:
    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 256, (80, 60, 3), dtype=np.uint8))
    arr = resize_rgb(img)
    assert arr.shape == (224, 224, 3) and arr.dtype == np.uint8 and arr.flags.c_contiguous
    grid = pooled_grid(arr)
    assert grid.shape == (7, 7, 3) and grid.dtype == np.float32
    for r in range(7):
        for c in range(7):
            block = arr[32 * r : 32 * r + 32, 32 * c : 32 * c + 32].reshape(-1, 3)
            np.testing.assert_allclose(grid[r, c], block.mean(0), rtol=1e-6)
    batch = pooled_grid(np.stack([arr, arr[::-1]]))
    assert batch.shape == (2, 7, 7, 3)
    np.testing.assert_array_equal(batch[0], grid)
    with pytest.raises(ValueError, match="multiple"):
        pooled_grid(np.zeros((100, 100, 3), np.uint8))


def test_zip_member_loader(tmp_path: Path) -> None:
    zpath = tmp_path / "catalogue.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("images/1.jpg", encode(Image.new("RGB", (60, 80), (0, 128, 0)), "JPEG"))
    loader = ZipMember(str(zpath), "images/1.jpg")
    assert open_image(loader).size == (60, 80)
    with pytest.raises(ImageError, match=r"images/2\.jpg: not found in the archive"):
        open_image(ZipMember(str(zpath), "images/2.jpg"))
