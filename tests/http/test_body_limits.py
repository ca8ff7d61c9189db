"""Over-limit bodies are refused before they are read (issue #17, point 1).

The request's input stream counts what is read from it: a refusal from Content-Length reads
nothing, a file over its limit is stopped while it streams, and no temporary file grows past
the limit. Limits are set small (a few hundred KB) so the tests stay small and fast.
"""

from __future__ import annotations

import io
from typing import Any

import pytest
from django.test import Client

LIMIT = 256 * 1024  # RETRIEVAL_MAX_UPLOAD_BYTES in these tests
MARGIN = 1024 * 1024  # retrieval.http.limits.FORM_MARGIN_BYTES
BOUNDARY = "BoUnDaRy"


class CountingInput(io.RawIOBase):
    """A request body of ``size`` bytes (a multipart form with one file), counting reads."""

    def __init__(self, size: int, *, field: str = "image") -> None:
        head = (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{field}"; '
            'filename="big.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
        ).encode()
        tail = f"\r\n--{BOUNDARY}--\r\n".encode()
        self.parts = [head, tail]
        self.size = size
        self.filler = size - len(head) - len(tail)
        self.position = 0
        self.read_bytes = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        head, tail = self.parts
        n = min(len(buffer), self.size - self.position)
        out = bytearray()
        while len(out) < n:
            p = self.position + len(out)
            if p < len(head):
                out += head[p : p + n - len(out)]
            elif p < len(head) + self.filler:
                out += b"\xff" * min(n - len(out), len(head) + self.filler - p)
            else:
                q = p - len(head) - self.filler
                out += tail[q : q + n - len(out)]
        buffer[:n] = out
        self.position += n
        self.read_bytes += n
        return n


def post(client: Client, path: str, body: CountingInput, *, declared: int | None = None):
    environ: dict[str, Any] = {
        "CONTENT_TYPE": f"multipart/form-data; boundary={BOUNDARY}",
        "CONTENT_LENGTH": str(body.size if declared is None else declared),
        "wsgi.input": io.BufferedReader(body),
    }
    return client.generic("POST", path, **environ)


@pytest.fixture
def small_limits(settings):
    settings.RETRIEVAL_MAX_UPLOAD_BYTES = LIMIT
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = LIMIT + MARGIN
    settings.RETRIEVAL_MAX_IMPORT_BYTES = 8 * LIMIT
    return settings


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/", "/api/v1/search/", "/admin/retrieval/garment/add/"])
def test_an_over_limit_body_is_refused_from_content_length_without_reading_it(
    small_limits, path, admin_user
):
    client = Client(enforce_csrf_checks=True)  # the CSRF check read the whole body before
    if path.startswith("/admin/"):
        client.force_login(admin_user)
    body = CountingInput(LIMIT + MARGIN + 64 * 1024)
    response = post(client, path, body)
    assert response.status_code == 413
    assert body.read_bytes == 0
    assert response["Connection"] == "close"
    if path.startswith("/api/"):
        assert response.json()["error"]["code"] == "payload_too_large"
    else:
        assert b"too large" in response.content


@pytest.fixture
def largest_stored(monkeypatch, small_limits) -> list[int]:
    """[the largest size any upload temporary file reached], watched chunk by chunk."""
    from django.core.files.uploadhandler import TemporaryFileUploadHandler

    biggest = [0]
    original = TemporaryFileUploadHandler.receive_data_chunk

    def watch(self, raw_data, start):
        result = original(self, raw_data, start)
        biggest[0] = max(biggest[0], self.file.tell())
        return result

    monkeypatch.setattr(TemporaryFileUploadHandler, "receive_data_chunk", watch)
    small_limits.FILE_UPLOAD_MAX_MEMORY_SIZE = 0  # every file goes to a temporary file
    return biggest


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/", "/api/v1/search/"])
def test_a_photo_over_its_limit_is_never_stored_past_it(largest_stored, path):
    # The body fits (photo + form margin), the photo does not: cut at the limit + 1 byte, so
    # the usual check refuses it with its usual answer.
    body = CountingInput(LIMIT + MARGIN // 2)
    response = post(Client(), path, body)
    assert response.status_code == 413
    assert 0 < largest_stored[0] <= LIMIT + 1
    if path.startswith("/api/"):
        assert response.json()["error"]["code"] == "image_too_large"
    else:
        assert "image too large" in response.content.decode()


@pytest.mark.django_db
def test_an_import_archive_over_its_limit_is_stopped_while_it_streams(largest_stored, admin_user):
    client = Client()
    client.force_login(admin_user)
    body = CountingInput(8 * LIMIT + MARGIN // 2, field="upload")
    response = post(client, "/admin/retrieval/importjob/add/", body)
    assert response.status_code == 413
    assert body.read_bytes < body.size
    assert largest_stored[0] <= 8 * LIMIT


@pytest.mark.django_db
def test_an_admin_catalogue_import_may_be_larger_than_a_photo(small_limits, admin_user):
    client = Client()
    client.force_login(admin_user)
    # Over the photo limit, under the import limit: read and answered by the admin's form.
    body = CountingInput(3 * LIMIT, field="upload")
    response = post(client, "/admin/retrieval/importjob/add/", body)
    assert response.status_code in {200, 400}  # the form again, with its errors (not a zip)
    assert body.read_bytes == body.size
    over = CountingInput(8 * LIMIT + MARGIN + 1, field="upload")
    assert post(client, "/admin/retrieval/importjob/add/", over).status_code == 413
    assert over.read_bytes == 0
