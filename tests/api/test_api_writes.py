"""Contract tests of the REST API's writes (/api/v1/): staff tokens and permissions, garments
created, updated and deleted (indexing queued), categories managed; real PostgreSQL and Redis."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from retrieval.models import Garment
from tests.api.helpers import error_of, image_bytes, photo
from tests.factories import CategoryFactory, GarmentFactory, jpeg_bytes

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("no_search_throttle")]

SEARCH = "/api/v1/search/"
GARMENTS = "/api/v1/garments/"
CATEGORIES = "/api/v1/categories/"
HIT_FIELDS = {
    *("id", "sku", "title", "category", "colour", "image_url", "score"),
    *("gender", "season", "usage"),
}


# --------------------------------------------------------------------------- writes


@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("post", GARMENTS),
        ("patch", GARMENTS + "{garment}/"),
        ("put", GARMENTS + "{garment}/"),
        ("delete", GARMENTS + "{garment}/"),
        ("post", CATEGORIES),
        ("patch", CATEGORIES + "{category}/"),
        ("delete", CATEGORIES + "{category}/"),
    ],
)
def test_writes_need_a_staff_token(anon, shopper, method, url):
    garment = GarmentFactory()
    url = url.format(garment=garment.pk, category=garment.category_id)
    response = getattr(anon, method)(url, {"title": "x", "name": "x"}, format="json")
    error_of(response, 401, "not_authenticated")
    assert response["WWW-Authenticate"] == "Token"
    response = getattr(shopper, method)(url, {"title": "x", "name": "x"}, format="json")
    error_of(response, 403, "permission_denied")
    bad = APIClient()
    bad.credentials(HTTP_AUTHORIZATION="Token not-a-real-token")
    error_of(getattr(bad, method)(url, {}, format="json"), 401, "authentication_failed")
    assert Garment.objects.filter(pk=garment.pk, title=garment.title).exists()


def test_staff_create_a_garment_and_it_is_queued_for_indexing(
    staff, django_capture_on_commit_callbacks
):
    category = CategoryFactory(name="Test Jackets")
    data = {
        "sku": "API-0001",
        "title": "Rain jacket",
        "category": category.slug,
        "colour": "Yellow",
        "image": photo(jpeg_bytes((230, 200, 20)), "jacket.jpg"),
    }
    with django_capture_on_commit_callbacks() as callbacks:
        response = staff.post(GARMENTS, data, format="multipart")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["status"] == "pending"
    assert body["sku"] == "API-0001" and body["category"]["slug"] == "test-jackets"
    assert len(callbacks) == 1  # enqueue_indexing, sent once the transaction commits
    garment = Garment.objects.get(pk=body["id"])
    assert garment.image.name.endswith(".jpg") and image_bytes(garment)[:2] == b"\xff\xd8"
    # Same sku again: refused.
    data["image"] = photo(jpeg_bytes(), "again.jpg")
    error = error_of(staff.post(GARMENTS, data, format="multipart"), 400, "invalid")
    assert "sku" in error["details"]


def test_staff_create_refuses_bad_images(staff, settings):
    category = CategoryFactory(name="Test Bad Images")
    data = {"sku": "API-BAD", "title": "x", "category": category.pk}
    error = error_of(
        staff.post(GARMENTS, {**data, "image": photo(b"%PDF-1.4", "a.pdf")}, format="multipart"),
        400,
        "invalid_image",
    )
    assert "not an image" in error["message"]
    settings.RETRIEVAL_MAX_UPLOAD_BYTES = 300
    big = photo(jpeg_bytes(size=(300, 300), pattern=True))
    error_of(
        staff.post(GARMENTS, {**data, "image": big}, format="multipart"), 413, "image_too_large"
    )
    error_of(staff.post(GARMENTS, data, format="multipart"), 400, "invalid")
    assert not Garment.objects.filter(sku="API-BAD").exists()


def test_staff_update_reindexes_only_for_a_new_image(staff, django_capture_on_commit_callbacks):
    garment = GarmentFactory(title="Old title")
    url = f"{GARMENTS}{garment.pk}/"
    with django_capture_on_commit_callbacks() as callbacks:
        response = staff.patch(url, {"title": "New title"}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["title"] == "New title" and response.json()["status"] == "ready"
    assert callbacks == []
    with django_capture_on_commit_callbacks() as callbacks:
        response = staff.patch(
            url, {"image": photo(jpeg_bytes((10, 10, 200)), "blue.jpg")}, format="multipart"
        )
    assert response.status_code == 200, response.content
    assert response.json()["status"] == "pending"
    assert len(callbacks) == 2  # indexing queued; the replaced image's file deleted
    moved = CategoryFactory(name="Test Moved")
    response = staff.patch(url, {"category": moved.pk}, format="json")
    assert response.json()["category"]["id"] == moved.pk


def test_staff_delete_a_garment(staff, anon):
    garment = GarmentFactory()
    assert staff.delete(f"{GARMENTS}{garment.pk}/").status_code == 204
    assert not Garment.objects.filter(pk=garment.pk).exists()
    error_of(staff.delete(f"{GARMENTS}{garment.pk}/"), 404, "not_found")


def test_staff_manage_categories(staff):
    response = staff.post(CATEGORIES, {"name": "Test Raincoats"}, format="json")
    assert response.status_code == 201, response.content
    created = response.json()
    assert created["slug"] == "test-raincoats" and created["active"] is True
    error = error_of(
        staff.post(CATEGORIES, {"name": "test raincoats"}, format="json"), 400, "invalid"
    )
    assert "already exists" in error["details"]["name"][0]
    url = f"{CATEGORIES}{created['id']}/"
    assert staff.patch(url, {"active": False}, format="json").json()["active"] is False
    error_of(staff.patch(url, {"parent": created["id"]}, format="json"), 400, "invalid")
    GarmentFactory(category_id=created["id"])
    error = error_of(staff.delete(url), 409, "protected")
    assert "still holds 1 garment" in error["message"]
    Garment.objects.filter(category_id=created["id"]).delete()
    assert staff.delete(url).status_code == 204
