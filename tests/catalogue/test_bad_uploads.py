"""A corpus of malformed, hostile and unusual images (tests/images_corpus.py, made in code)
through every way an image comes in: admin upload, API create, API search (multipart and
base64 JSON) and the shop's search form.

Refused (empty, truncated JPEG/PNG, a decompression bomb, more pixels than
RETRIEVAL_MAX_PIXELS, text/SVG/HTML/PDF whatever their extension): a 4xx (413 for the too
large, where the channel has it; the admin re-renders its form with 400) and a message a
person understands; nothing stored.

Accepted, by choice: CMYK JPEGs, 16-bit PNGs, a PNG named .jpg, animated GIF/WebP (their first
frame) and a JPEG with junk appended are all real photos that shops send, so refusing them
would refuse real products. They are answered 2xx and stored as what every stored image is:
a fresh RGB JPEG of their pixels, with nothing else kept.

Never a 5xx anywhere.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from retrieval.models import Garment
from retrieval.tokens import issue_token
from tests.factories import CategoryFactory, grant_catalogue_permissions
from tests.images_corpus import ACCEPTED, REFUSED, Case, assert_clean_jpeg

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.usefixtures("no_search_throttle", "fast_password_hashing"),
]

CHANNELS = ("admin", "api-create", "api-search", "api-search-base64", "site-search")


def media_files(root) -> list[str]:
    return sorted(str(p) for p in Path(root).rglob("*") if p.is_file())


def file_of(case: Case) -> SimpleUploadedFile:
    return SimpleUploadedFile(case.name, case.data, content_type=case.content_type)


def send(channel: str, case: Case, *, admin_client, django_user_model, sku: str = "BAD-1"):
    """Post the case's file through one channel; returns (response, message shown or None)."""
    if channel == "admin":
        category = CategoryFactory(name="Bad Input Tees")
        data = {"sku": sku, "title": "Tee", "description": "", "category": category.pk}
        data.update(colour="Red", attributes="{}", image=file_of(case))
        return admin_client.post("/admin/retrieval/garment/add/", data), None
    if channel == "site-search":
        return APIClient().post("/", {"image": file_of(case)}, format="multipart"), None
    client = APIClient()
    if channel == "api-create":
        user = django_user_model.objects.create_user("bad-input-staff", is_staff=True)
        grant_catalogue_permissions(user)
        client.credentials(HTTP_AUTHORIZATION=f"Token {issue_token(user=user).key}")
        category = CategoryFactory(name="Bad Input Coats")
        data = {"sku": sku, "title": "Coat", "category": category.pk, "image": file_of(case)}
        response = client.post("/api/v1/garments/", data, format="multipart")
    elif channel == "api-search":
        response = client.post("/api/v1/search/", {"image": file_of(case)}, format="multipart")
    else:
        encoded = base64.b64encode(case.data).decode()
        response = client.post("/api/v1/search/", {"image": encoded}, format="json")
    if response.status_code < 400:
        return response, None
    return response, response.json()["error"]["message"]


@pytest.mark.parametrize("channel", CHANNELS)
@pytest.mark.parametrize("name", list(REFUSED))
def test_bad_files_are_refused_with_a_clear_message(
    name, channel, admin_client, django_user_model, media_root
):
    case = REFUSED[name]
    response, message = send(
        channel, case, admin_client=admin_client, django_user_model=django_user_model
    )
    expected = 413 if case.too_large and channel != "admin" else 400
    if name == "zero-bytes" and channel == "api-search-base64":
        expected = 400  # "" is a blank field before it is an empty image
    assert response.status_code == expected, response.content[:1000]
    if message is None:  # a page: the admin's form or the shop's, with the reason shown
        message = response.content.decode()
        if channel == "site-search":
            assert 'role="alert"' in message
    assert any(m in message.lower() for m in case.messages), message[:2000]
    assert not Garment.objects.filter(sku="BAD-1").exists()
    assert media_files(media_root) == []


@pytest.mark.parametrize("channel", ["admin", "api-create"])
@pytest.mark.parametrize("name", list(ACCEPTED))
def test_unusual_real_photos_are_stored_as_fresh_rgb_jpegs(
    name, channel, admin_client, django_user_model, media_root
):
    case = ACCEPTED[name]
    response, _ = send(
        channel, case, admin_client=admin_client, django_user_model=django_user_model
    )
    assert response.status_code == (302 if channel == "admin" else 201), response.content[:2000]
    garment = Garment.objects.get(sku="BAD-1")
    assert re.fullmatch(r"garments/\d{4}/\d{2}/[0-9a-f]{32}\.jpg", garment.image.name)
    with garment.image.open("rb") as handle:
        assert_clean_jpeg(handle.read(), colour=case.colour)
    assert media_files(media_root) == [str(media_root / garment.image.name)]


@pytest.mark.slow
@pytest.mark.parametrize("channel", ["api-search", "api-search-base64", "site-search"])
@pytest.mark.parametrize("name", list(ACCEPTED))
def test_unusual_real_photos_can_be_searched_with_and_are_never_stored(
    name, channel, trained_catalogue, admin_client, django_user_model, settings
):
    before = media_files(settings.MEDIA_ROOT)
    response, _ = send(
        channel, ACCEPTED[name], admin_client=admin_client, django_user_model=django_user_model
    )
    assert response.status_code == 200, response.content[:1000]
    if channel == "site-search":
        cards = re.findall(r'<li class="card" data-garment-id="\d+"', response.content.decode())
        assert len(cards) == 10
    else:
        assert len(response.json()["results"]) == 10
    assert media_files(settings.MEDIA_ROOT) == before
