"""Uploaded images: the one path that reads, size-checks and decodes an untrusted upload.

Every upload (admin and API garment photos, search photos from the shop and the API) goes
through :func:`read_upload` and :func:`decode_upload`, so the limits (RETRIEVAL_MAX_UPLOAD_BYTES,
RETRIEVAL_MAX_PIXELS) and the messages are the same everywhere. Refusals are
:class:`retrieval.images.ImageError` (``reason`` fit to show to a person); each caller turns
them into its own answer (a form error, a 400/413 API error, a Django ValidationError).
"""

from __future__ import annotations

import hashlib

from django.conf import settings
from django.core.exceptions import ValidationError
from PIL import Image

from retrieval.images import DECODE_MAX_SIDE, ImageError, open_image

TOO_LARGE = "image too large"


def is_too_large(error: ImageError) -> bool:
    """Whether a refusal is about size (bytes or pixels: HTTP 413) rather than content."""
    return error.reason.startswith(TOO_LARGE)


def read_upload(upload) -> bytes:
    """The bytes of an uploaded file, refusing one over RETRIEVAL_MAX_UPLOAD_BYTES before
    reading it (its declared size), or while reading it (no more than the limit + 1 is read).

    upload: a Django ``UploadedFile`` (or any file object with ``size``, ``seek``, ``read``).
    Raises ImageError.
    """
    limit = settings.RETRIEVAL_MAX_UPLOAD_BYTES
    if upload.size is not None and upload.size > limit:
        raise ImageError(f"{TOO_LARGE}: {upload.size} bytes, the limit is {limit}")
    upload.seek(0)
    data = upload.read(limit + 1)
    if len(data) > limit:
        raise ImageError(f"{TOO_LARGE}: over {limit} bytes, the limit is {limit}")
    return data


def decode_upload(data: bytes, *, name: str | None = None) -> Image.Image:
    """Decode uploaded bytes into an upright sRGB RGB image, refusing what no upload may be
    (over the byte or pixel limits, not an allowed format, corrupt). Raises ImageError.

    The image is at most DECODE_MAX_SIDE pixels long (a JPEG is decoded downscaled): what a
    search reads (448 px at most) and enough to check an upload, without a 40 MP photo's
    120 MB of pixels, copied by each conversion, in the web worker. Every byte is still
    decoded, so a truncated or corrupt file is refused as before; stored images are
    re-encoded from the upload's bytes at full size (:func:`store_image`).
    """
    limit = settings.RETRIEVAL_MAX_UPLOAD_BYTES
    if len(data) > limit:
        raise ImageError(f"{TOO_LARGE}: {len(data)} bytes, the limit is {limit}")
    return open_image(
        data, max_pixels=settings.RETRIEVAL_MAX_PIXELS, name=name, max_side=DECODE_MAX_SIDE
    )


#: Longest side a search photo is decoded at (at least): what the shop page uploads, and
#: twice the CNN's input for the query-time crop pass. JPEGs decode at 1/2..1/8 scale.
QUERY_DECODE_SIDE = 1024


def decode_query_upload(data: bytes, *, name: str | None = None) -> Image.Image:
    """Decode a search photo like :func:`decode_upload`, but reduced while decoding where the
    format allows (JPEG): the pixel limit applies to the reduced image, so 48-200 MP camera
    photos are searchable (the CNN sees 224 x 224). Raises ImageError."""
    limit = settings.RETRIEVAL_MAX_UPLOAD_BYTES
    if len(data) > limit:
        raise ImageError(f"{TOO_LARGE}: {len(data)} bytes, the limit is {limit}")
    side = QUERY_DECODE_SIDE
    return open_image(
        data, max_pixels=settings.RETRIEVAL_MAX_PIXELS, name=name, draft_size=(side, side)
    )


def validate_upload(*, upload) -> None:
    """Refuse an uploaded image over the limits, or that does not decode (ValidationError).

    The upload is left rewound, for the caller to store.
    """
    try:
        decode_upload(read_upload(upload), name=upload.name)
    except ImageError as exc:
        raise ValidationError(str(exc)) from exc
    finally:
        upload.seek(0)


def image_digest(data: bytes) -> str:
    """SHA-256 of an image's bytes, hex: what a re-import compares."""
    return hashlib.sha256(data).hexdigest()
