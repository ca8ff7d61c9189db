"""Creates that lose a race and absurd JSON answer 4xx in the API's error shape, never 500
(issue #17, point 6). Real PostgreSQL; the race is made deterministic with an uncommitted row
(tests.blocking): the request passes the serializer's uniqueness check, then the database
refuses its insert, as when eight clients create the same SKU at once."""

from __future__ import annotations

import threading

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from retrieval.api.parsers import MAX_JSON_DEPTH, json_too_deep
from retrieval.models import Category, Garment
from tests.blocking import in_thread, race
from tests.factories import grant_catalogue_permissions, jpeg_bytes

GARMENTS = "/api/v1/garments/"
CATEGORIES = "/api/v1/categories/"


def error_of(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.content[:500]
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code
    return body["error"]


@pytest.fixture
def staff_user(django_user_model):
    user = django_user_model.objects.create_user("curator", password="pw-x", is_staff=True)
    grant_catalogue_permissions(user)
    return user


def as_staff(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user=user)
    return client


@pytest.mark.django_db(transaction=True)
def test_a_category_created_concurrently_answers_400_on_the_name(staff_user):
    outcome = race(
        "INSERT INTO retrieval_category (name, slug, active, created_at, updated_at) "
        "VALUES (%s, %s, true, now(), now())",
        ["Shirts", "shirts"],
        lambda: as_staff(staff_user).post(CATEGORIES, {"name": "Shirts"}, format="json"),
    )
    error = error_of(outcome["result"], 400, "invalid")
    assert "already exists" in error["details"]["name"][0]
    assert Category.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_sku_created_concurrently_answers_400_on_the_sku(staff_user, media_root):
    category = Category.objects.create(name="Raced", slug="raced")

    def create():
        image = SimpleUploadedFile("p.jpg", jpeg_bytes(), content_type="image/jpeg")
        data = {"sku": "RACE-1", "title": "Raced", "category": category.pk, "image": image}
        return as_staff(staff_user).post(GARMENTS, data, format="multipart")

    outcome = race(
        "INSERT INTO retrieval_garment (sku, title, description, category_id, colour, gender, "
        "season, usage, image, attributes, status, error, claimed_by, pixel_hash, created_at, "
        "updated_at) VALUES (%s, 'first', '', %s, '', '', '', '', 'garments/x.jpg', '{}', "
        "'pending', '', '', '', now(), now())",
        ["RACE-1", category.pk],
        create,
    )
    error = error_of(outcome["result"], 400, "invalid")
    assert "sku" in error["details"]
    assert Garment.objects.get(sku="RACE-1").title == "first"


@pytest.mark.django_db(transaction=True)
def test_eight_simultaneous_creates_of_one_category_give_one_201_and_400s(staff_user):
    barrier = threading.Barrier(8)

    def create():
        barrier.wait(timeout=30)
        return as_staff(staff_user).post(CATEGORIES, {"name": "Jeans"}, format="json")

    threads = [in_thread(create) for _ in range(8)]
    for thread, _ in threads:
        thread.join(timeout=60)
    outcomes = [outcome for _, outcome in threads]
    assert all("result" in o for o in outcomes), [o.get("error") for o in outcomes]
    statuses = sorted(o["result"].status_code for o in outcomes)
    assert statuses == [201] + [400] * 7, statuses
    assert Category.objects.filter(name="Jeans").count() == 1


@pytest.mark.django_db
def test_json_nested_200k_levels_deep_answers_400():
    body = "[" * 200_000 + "]" * 200_000
    response = APIClient().post("/api/v1/search/", body, content_type="application/json")
    error = error_of(response, 400, "parse_error")
    assert "nested deeper" in error["message"]
    deep_object = '{"a":' * 100_000 + "1" + "}" * 100_000
    response = APIClient().post("/api/v1/search/", deep_object, content_type="application/json")
    error_of(response, 400, "parse_error")


def test_depth_counts_brackets_outside_strings_only():
    assert not json_too_deep('{"image": "' + "[" * 10_000 + '\\"[{", "top": [1, [2]]}')
    assert not json_too_deep("[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH)
    assert json_too_deep("[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1))
