"""Safe image decoding and the pixel-level preprocessing of the retrieval method.

Pillow + numpy only (no torch): the web process validates uploads with :func:`open_image`
without loading a CNN, and :mod:`retrieval.features` reuses the same code so that an image
is decoded the same way at index time and at query time.

Everything that reaches the model goes through one path::

    source (path | bytes | file-like | zero-arg callable)
      -> open_image()          RGB PIL image: EXIF-oriented, alpha flattened on white, sRGB
      -> resize_rgb()          (224, 224, 3) uint8
      -> pooled_grid()         (7, 7, 3) float32 mean RGB of each 32x32 block (colour feature)

Untrusted input is handled defensively: the pixel count is checked from the header *before*
any pixel is decoded (decompression bombs), only common raster formats are accepted (no EPS,
which would run Ghostscript), truncated/corrupt data and decoder crashes become
:class:`ImageError` with a message that can be shown to a person.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import threading
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

import numpy as np
from PIL import Image, ImageCms, ImageOps

__all__ = [
    "ALLOWED_FORMATS",
    "DECODE_MAX_SIDE",
    "DEFAULT_MAX_PIXELS",
    "GRID",
    "INPUT_SIZE",
    "PHASH_BITS",
    "ImageError",
    "ImageSource",
    "ZipMember",
    "encode_jpeg",
    "hash_distance",
    "load_rgb224",
    "open_image",
    "perceptual_hash",
    "pixel_digest",
    "pooled_grid",
    "reencode_jpeg",
    "resize_rgb",
    "thumbnail_distance",
    "thumbnail_signature",
    "thumbnail_vector",
]

#: Side of the square network input, in pixels (the paper resizes every photo to 224x224).
INPUT_SIZE = 224
#: Side of the last conv map of both backbones (224 / 32); the colour feature reads this grid.
GRID = 7
#: Default refusal threshold: 40 megapixels is above any phone camera's photo (~12-50 MP
#: sensors are binned to <= 12-24 MP in JPEG) yet far below what exhausts a worker's memory
#: (40 MP RGB = 120 MB decoded).
DEFAULT_MAX_PIXELS = 40_000_000
#: Longest side a shopper's or curator's upload is decoded to when only checked or searched
#: (:func:`open_image` ``max_side``): above the 448 px the query crop reads, and small enough
#: that a 40 MP photo costs a web worker a few MB of pixels instead of 120 MB per copy.
DECODE_MAX_SIDE = 1024
#: Formats we decode. Restricting Pillow's plugin list shrinks the attack surface of untrusted
#: uploads (EPS would shell out to Ghostscript; PSD/ICNS/etc. are exotic parsers we never need).
#: MPO is what many phones write for JPEG photos; AVIF is accepted when Pillow was built with it.
ALLOWED_FORMATS: tuple[str, ...] = ("JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF", "AVIF")

#: What :func:`open_image` accepts: a filesystem path, the encoded bytes, a binary file-like
#: object (e.g. a Django ``UploadedFile``) or a zero-argument callable returning one of those
#: (lazy loaders such as :class:`ZipMember`, usable in DataLoader worker processes).
ImageSource = (
    str | os.PathLike[str] | bytes | bytearray | memoryview | IO[bytes] | Callable[[], Any]
)

_WHITE = (255, 255, 255)
#: Quality of the JPEGs we store (see :func:`reencode_jpeg`).
STORED_JPEG_QUALITY = 90


class ImageError(ValueError):
    """An input that cannot be used as a photo; ``str(err)`` is fit to show to a person.

    Attributes:
        name: the file name when known (path basename, upload name, zip member), else None.
        reason: the message without the file name.
    """

    def __init__(self, reason: str, *, name: str | None = None) -> None:
        self.reason = reason
        self.name = name
        super().__init__(f"{name}: {reason}" if name else reason)


def _allowed_formats() -> tuple[str, ...]:
    Image.init()  # registers the plugins so that Image.OPEN lists what this build can decode
    return tuple(f for f in ALLOWED_FORMATS if f in Image.OPEN)


def _source_name(source: Any, name: str | None) -> str | None:
    if name:
        return name
    if isinstance(source, str | os.PathLike):
        return os.path.basename(os.fspath(source))
    if isinstance(source, ZipMember):
        return source.member
    fname = getattr(source, "name", None)
    if isinstance(fname, str) and fname:
        return os.path.basename(fname)
    return None


def _as_stream(source: Any, name: str | None) -> tuple[IO[bytes], bool]:
    """Turn a supported source into a seekable binary stream, refusing empty input.

    Returns ``(stream, owned)``; ``owned`` streams are closed by the caller, a caller's own
    file object is left open.
    """
    if callable(source) and not hasattr(source, "read"):
        source = source()
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
        if not data:
            raise ImageError("the file is empty (0 bytes)", name=name)
        return io.BytesIO(data), True
    if isinstance(source, str | os.PathLike):
        path = os.fspath(source)
        try:
            fh = open(path, "rb")  # noqa: SIM115 - closed by open_image
        except FileNotFoundError:
            raise ImageError("file not found", name=name) from None
        except IsADirectoryError:
            raise ImageError("is a directory, not an image file", name=name) from None
        except PermissionError:
            raise ImageError("permission denied reading the file", name=name) from None
        if os.fstat(fh.fileno()).st_size == 0:
            fh.close()
            raise ImageError("the file is empty (0 bytes)", name=name)
        return fh, True
    if hasattr(source, "read"):
        stream = source
        owned = False
        if not (hasattr(stream, "seekable") and stream.seekable()):
            stream, owned = io.BytesIO(stream.read()), True
        start = stream.tell()
        end = stream.seek(0, io.SEEK_END)
        stream.seek(start)
        if end - start <= 0:
            raise ImageError("the file is empty (0 bytes)", name=name)
        return stream, owned
    raise TypeError(f"unsupported image source type: {type(source).__name__}")


def _to_8bit_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB, flattening transparency onto white.

    Catalogue photos are studio shots on white, so a transparent background must become
    white, not the black that a plain ``convert("RGB")`` gives for RGBA with zeroed pixels.
    """
    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        # Pillow's convert() *clips* 16/32-bit values to 255 (a 16-bit grey PNG would turn
        # almost white); rescale instead. 16-bit data: full range is 65535.
        arr = np.asarray(img, dtype=np.float64)
        top = float(arr.max()) if arr.size else 0.0
        if mode == "F" and top <= 1.0:
            scale = 255.0
        elif top > 255.0:
            scale = 255.0 / 65535.0 if top <= 65535.0 else 255.0 / top
        else:
            scale = 1.0
        grey = np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    # "transparency" in info: palette or grey/RGB PNG/GIF with a tRNS transparent colour.
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info
    if has_alpha:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*_WHITE, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode == "RGB":
        return img
    return img.convert("RGB")


def _to_srgb(img: Image.Image, icc: bytes | None) -> Image.Image:
    """Apply an embedded ICC profile (e.g. Display P3 phone photos, CMYK print files).

    The colour feature reads absolute colours, so a P3 photo read as if it were sRGB would
    shift every colour; this is best effort: a broken profile leaves the pixels as they are.
    """
    if not icc or img.mode not in ("RGB", "CMYK"):
        return img
    try:
        src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        dst = ImageCms.createProfile("sRGB")
        out = ImageCms.profileToProfile(img, src, dst, outputMode="RGB")
        return out if out is not None else img
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        return img


def open_image(
    source: ImageSource,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    name: str | None = None,
    draft_size: tuple[int, int] | None = None,
    max_side: int | None = None,
) -> Image.Image:
    """Decode an untrusted image into an upright 8-bit sRGB ``PIL.Image`` (mode ``"RGB"``).

    Args:
        source: path, encoded bytes, binary file-like object, or a zero-argument callable
            returning one of those.
        max_pixels: refuse images with more pixels than this (checked from the header,
            before any pixel data is decoded).
        name: file name for error messages (defaults to the path's / file object's name).
        draft_size: optional ``(w, h)`` the caller will downscale to; lets the JPEG decoder
            decode at 1/2..1/8 scale directly (a 4000x3000 photo decodes ~10x faster). The
            result is still at least ``draft_size`` in both dimensions.
        max_side: optional bound on the result's longer side: a JPEG is decoded at the
            largest DCT scale (1/2..1/8) that keeps it at least this long, and any image
            still longer is reduced by an integer factor (box average) before it is made
            upright and converted, so the conversions' copies are small too. The result's
            longer side is then between ``max_side / 2`` and ``max_side``.

    Returns:
        A fully loaded RGB image, detached from ``source``. EXIF orientation is applied,
        transparency is composited onto white, grey/palette/CMYK/16-bit inputs are converted,
        an embedded ICC profile is converted to sRGB, and for animated images the first frame
        is used.

    Raises:
        ImageError: empty file, not an image (or not an allowed format), too many pixels,
            truncated or corrupt data.
    """
    name = _source_name(source, name)
    stream, owned = _as_stream(source, name)
    try:
        return _decode(
            stream, name=name, max_pixels=max_pixels, draft_size=draft_size, max_side=max_side
        )
    finally:
        if owned:
            stream.close()


_JPEG_START = b"\xff\xd8\xff"


def _open_for_decoding(stream: IO[bytes], formats: tuple[str, ...], *, draft: bool) -> Image.Image:
    """``Image.open``, except that a JPEG to be decoded reduced (``draft``) is opened even
    above Pillow's own refusal size (2 x Image.MAX_IMAGE_PIXELS, ~179 MP): its pixel count
    is checked after the reduction instead (:func:`_decode`)."""
    start = stream.tell()
    try:
        return Image.open(stream, formats=formats)
    except Image.DecompressionBombError:
        stream.seek(start)
        if not (draft and "JPEG" in formats and stream.read(3) == _JPEG_START):
            raise
        stream.seek(start)
        from PIL import JpegImagePlugin

        return JpegImagePlugin.JpegImageFile(stream)


def _decode(
    stream: IO[bytes],
    *,
    name: str | None,
    max_pixels: int,
    draft_size: tuple[int, int] | None,
    max_side: int | None = None,
) -> Image.Image:
    formats = _allowed_formats()
    try:
        with warnings.catch_warnings():
            # Pillow warns above Image.MAX_IMAGE_PIXELS (89 MP): our own limit below governs,
            # so the warning is moot. Above twice that Pillow raises before we see the size.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with _open_for_decoding(stream, formats, draft=draft_size is not None) as img:
                width, height = img.size
                if width <= 0 or height <= 0:
                    raise ImageError("the image has no pixels", name=name)
                # draft() decodes a JPEG at 1/2..1/8 scale (DCT scaling), so the pixels that
                # count against the limit are the reduced ones: a 200 MP phone photo decodes
                # as ~3 MP (48-200 MP camera modes are common; issue #15).
                if draft_size is not None and img.format in ("JPEG", "MPO"):
                    # draft() keeps both sides >= the request, so orientation does not matter.
                    side = max(draft_size)
                    img.draft("RGB", (side, side))
                elif max_side is not None and img.format in ("JPEG", "MPO"):
                    # The longer side stays >= max_side: scale = the largest 1/2^k that does.
                    scale = max(width, height) / max_side
                    img.draft("RGB", (int(width / scale) + 1, int(height / scale) + 1))
                # A search photo (draft_size) counts its reduced pixels; an upload to be stored
                # (max_side: checked reduced, stored at full size) counts them all.
                counted = img.size if draft_size is not None else (width, height)
                if counted[0] * counted[1] > max_pixels:
                    raise ImageError(
                        f"image too large: {width}x{height} pixels exceeds the limit of "
                        f"{max_pixels} pixels",
                        name=name,
                    )
                if getattr(img, "n_frames", 1) > 1:
                    img.seek(0)  # animated GIF/WebP/APNG or multi-page TIFF: first frame
                icc = img.info.get("icc_profile")
                img.load()  # decode now, inside the try, so truncation surfaces here
                loaded: Image.Image = img
                if max_side is not None and max(img.size) > max_side:
                    loaded = img.reduce(-(-max(img.size) // max_side))  # ceil: <= max_side
                upright = ImageOps.exif_transpose(loaded)
                rgb = _to_srgb(_to_8bit_rgb(upright), icc)
                if rgb is img:
                    rgb = img.copy()  # detach from the (about to be closed) file
                return rgb
    except ImageError:
        raise
    except Image.UnidentifiedImageError:
        raise ImageError(
            "that file is not an image (or not a supported format: "
            + ", ".join(f for f in formats if f != "MPO")
            + ")",
            name=name,
        ) from None
    except Image.DecompressionBombError as exc:
        found = re.search(r"\((\d+) pixels\)", str(exc))
        pixels = f"{found.group(1)} pixels" if found else "too many pixels"
        raise ImageError(
            f"image too large: {pixels} exceeds the limit of {max_pixels} pixels", name=name
        ) from None
    except OSError as exc:
        text = str(exc)
        lowered = text.lower()
        if "truncat" in lowered or "broken data stream" in lowered or "premature end" in lowered:
            raise ImageError(
                "the image file is truncated (incomplete download?)", name=name
            ) from None
        raise ImageError(f"the image file is corrupt ({text})", name=name) from None
    except MemoryError:
        raise ImageError("the image needs too much memory to decode", name=name) from None
    except Exception as exc:  # decoders of untrusted data can raise anything
        raise ImageError(
            f"the image file is corrupt ({type(exc).__name__}: {exc})", name=name
        ) from None


def reencode_jpeg(
    source: ImageSource,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    name: str | None = None,
    quality: int = STORED_JPEG_QUALITY,
) -> bytes:
    """Decode an untrusted image safely and encode its pixels as a fresh baseline JPEG.

    What we store and serve is this output, never the uploaded bytes: whatever rode along in
    the file (HTML or script appended after the image, SVG or HTML named .jpg, EXIF with GPS,
    XMP, comments, ICC profiles, extra frames) is gone, and the bytes are a JPEG whatever the
    client called the file. Pixels are upright 8-bit sRGB (:func:`open_image`). Chroma is not
    subsampled (4:4:4): the colour feature reads absolute colours, and 4:2:0 smears the thin
    coloured details (stripes, piping) that it relies on.

    Raises:
        ImageError: as :func:`open_image`.
    """
    return encode_jpeg(open_image(source, max_pixels=max_pixels, name=name), quality=quality)


def encode_jpeg(decoded: Image.Image, *, quality: int = STORED_JPEG_QUALITY) -> bytes:
    """Encode an image decoded by :func:`open_image` as a fresh JPEG (see :func:`reencode_jpeg`:
    a caller that also needs the pixels, e.g. their fingerprints, decodes once and calls this)."""
    # A new image holds only pixels: Pillow's JPEG writer copies some of the source's
    # ``info`` (the comment, where user text could hide) from the image it is given.
    clean = Image.new("RGB", decoded.size)
    clean.paste(decoded)
    out = io.BytesIO()
    clean.save(out, "JPEG", quality=quality, subsampling=0, optimize=True)
    return out.getvalue()


def resize_rgb(img: Image.Image, *, size: int = INPUT_SIZE) -> np.ndarray:
    """Resize an RGB image to the square network input, ignoring aspect ratio (as the paper).

    Bilinear with Pillow's antialiasing (its filters widen their support when shrinking),
    so a large photo is averaged rather than aliased.

    Returns:
        ``(size, size, 3)`` uint8 array, C-contiguous, RGB.
    """
    if img.mode != "RGB":
        img = img.convert("RGB")
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8).copy()


def pooled_grid(rgb: np.ndarray, *, grid: int = GRID) -> np.ndarray:
    """Average-pool RGB images to a ``grid x grid`` map (the paper's 7x7 colour grid).

    Args:
        rgb: ``(H, W, 3)`` or ``(N, H, W, 3)`` array (uint8 or float, values 0..255); H and W
            must be multiples of ``grid`` (224 -> 32x32 blocks).

    Returns:
        float32 array ``(grid, grid, 3)`` or ``(N, grid, grid, 3)``: mean R, G, B of each
        block, values 0..255 (row-major blocks, so block ``r*grid + c`` is row r, column c).
    """
    arr = np.asarray(rgb)
    single = arr.ndim == 3
    if single:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"expected (N, H, W, 3) RGB, got shape {np.shape(rgb)}")
    n, h, w, _ = arr.shape
    if h % grid or w % grid:
        raise ValueError(f"image size {h}x{w} is not a multiple of the {grid}x{grid} grid")
    blocks = arr.reshape(n, grid, h // grid, grid, w // grid, 3)
    out = blocks.mean(axis=(2, 4), dtype=np.float64).astype(np.float32)
    return out[0] if single else out


def load_rgb224(
    source: ImageSource,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    name: str | None = None,
    size: int = INPUT_SIZE,
) -> np.ndarray:
    """Decode + resize: the per-image work done before the CNN (and in DataLoader workers).

    Returns:
        ``(size, size, 3)`` uint8 RGB array.

    Raises:
        ImageError: as :func:`open_image`.
    """
    img = open_image(source, max_pixels=max_pixels, name=name, draft_size=(size, size))
    return resize_rgb(img, size=size)


# Zip archives: one ZipFile per (process, path) so that forked DataLoader workers never share
# a file offset, and per thread because ZipFile reads are not thread-safe.
_ZIP_CACHE = threading.local()


@dataclass(frozen=True, slots=True)
class ZipMember:
    """Picklable lazy loader of one member of a zip archive (e.g. a catalogue export).

    ``ZipMember("/data/catalogue.zip", "images/1163.jpg")()`` returns the member's bytes.
    Safe to pass to DataLoader worker processes: each process opens its own ZipFile.
    """

    zip_path: str
    member: str

    def __call__(self) -> bytes:
        cache: dict[tuple[int, str], zipfile.ZipFile] | None = getattr(_ZIP_CACHE, "files", None)
        if cache is None:
            cache = _ZIP_CACHE.files = {}
        key = (os.getpid(), self.zip_path)
        zf = cache.get(key)
        if zf is None:
            zf = cache[key] = zipfile.ZipFile(self.zip_path)
        try:
            return zf.read(self.member)
        except KeyError:
            raise ImageError("not found in the archive", name=self.member) from None


# --------------------------------------------------------------------------- fingerprints

#: Side of the grey thumbnail a perceptual hash reads, and of the low-frequency DCT block it
#: keeps: 64x64 -> DCT -> top-left 16x16 -> 256 bits, each above the median. The classic pHash
#: (32x32 -> 8x8, 64 bits) separated copies from distinct studio shots too poorly on small
#: catalogue photos (docs/benchmarks.md, "Duplicate photos").
_PHASH_SIZE = 64
_PHASH_BLOCK = 16
#: Bits of :func:`perceptual_hash`.
PHASH_BITS = _PHASH_BLOCK * _PHASH_BLOCK


def pixel_digest(img: Image.Image) -> str:
    """SHA-256 (hex) of an image's decoded pixels: the same for two files holding the same
    pixels whatever their bytes, format or name (a PNG and its lossless re-save, a JPEG with
    other metadata). ``img``: as :func:`open_image` returns it (upright 8-bit sRGB RGB), so
    EXIF orientation, ICC profiles and transparency are normalised before hashing."""
    rgb = img if img.mode == "RGB" else img.convert("RGB")
    digest = hashlib.sha256(f"{rgb.width}x{rgb.height}:".encode())
    digest.update(rgb.tobytes())
    return digest.hexdigest()


def _dct_matrix(n: int) -> np.ndarray:
    """(n, n) orthonormal DCT-II matrix: ``M @ x`` is the DCT of a column vector x."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    matrix = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    matrix[0] /= np.sqrt(2.0)
    return matrix


_DCT = _dct_matrix(_PHASH_SIZE)


def perceptual_hash(img: Image.Image) -> bytes:
    """256-bit perceptual hash (pHash) of an image: 32 bytes.

    Grey 64x64 thumbnail (box filter: a resized or re-compressed copy averages to the same
    thumbnail) -> 2-D DCT -> the 16x16 lowest frequencies -> one bit per coefficient above
    their median (the DC term left out of the median: it only tracks brightness). Copies that
    are resized, re-compressed or slightly brightened differ in a few bits; distinct photos in
    many more. Compare with :func:`hash_distance`.
    """
    grey = img.convert("L").resize((_PHASH_SIZE, _PHASH_SIZE), Image.Resampling.BOX)
    pixels = np.asarray(grey, dtype=np.float64)
    low = (_DCT @ pixels @ _DCT.T)[:_PHASH_BLOCK, :_PHASH_BLOCK].ravel()
    bits = low > np.median(low[1:])
    return np.packbits(bits).tobytes()


def hash_distance(a: bytes, b: bytes) -> int:
    """Bits that differ between two perceptual hashes (:func:`perceptual_hash`), 0..256."""
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).bit_count()


#: Side of the colour thumbnail stored with every garment for near-duplicate checks.
THUMBNAIL_SIDE = 16


def thumbnail_signature(img: Image.Image) -> bytes:
    """The photo's colour thumbnail: ``(16, 16, 3)`` uint8 RGB, box-filtered (every source pixel
    counts, so a resized or re-compressed copy averages to nearly the same thumbnail), 768
    bytes; the aspect ratio is dropped (a copy keeps it). Compare with
    :func:`thumbnail_distance`."""
    rgb = img if img.mode == "RGB" else img.convert("RGB")
    small = rgb.resize((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.Resampling.BOX)
    return small.tobytes()


def thumbnail_vector(signature: bytes, side: int) -> np.ndarray:
    """``(side * side * 3,)`` float64: a stored thumbnail (:func:`thumbnail_signature`)
    averaged down to ``side`` (a divisor of :data:`THUMBNAIL_SIDE`), each channel's mean
    removed, unit norm (zero when flat)."""
    pixels = np.frombuffer(signature, dtype=np.uint8).astype(np.float64)
    pixels = pixels.reshape(THUMBNAIL_SIDE, THUMBNAIL_SIDE, 3)
    f = THUMBNAIL_SIDE // side
    pixels = pixels.reshape(side, f, side, f, 3).mean(axis=(1, 3))
    pixels -= pixels.reshape(-1, 3).mean(axis=0)
    flat = pixels.ravel()
    norm = float(np.linalg.norm(flat))
    return flat / norm if norm > 0 else flat


def thumbnail_distance(a: bytes, b: bytes, *, side: int = 8) -> float:
    """1 - the correlation of two photos' thumbnails (:func:`thumbnail_signature`) at ``side`` x
    ``side`` (8: as measured, docs/benchmarks.md "Duplicate photos"): 0 for the same
    picture, whatever its brightness and contrast (each channel's mean and the overall scale
    cancel out); a flat thumbnail is 1 from everything. Range 0..2."""
    return float(1.0 - thumbnail_vector(a, side) @ thumbnail_vector(b, side))
