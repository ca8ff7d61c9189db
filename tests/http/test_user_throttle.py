"""Signed-in shoppers and shopper tokens are throttled too, per account and at their own
(higher) rate; staff are not (issue #17, point 9). Counted in the real Redis."""

from __future__ import annotations

import uuid

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from retrieval.checks import check_search_throttle
from retrieval.http.throttle import throttle_cache
from tests.factories import jpeg_bytes

pytestmark = pytest.mark.django_db

SEARCH = "/api/v1/search/"


@pytest.fixture
def rates(settings):
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {"search": "1/min", "search_user": "3/min"},
    }


def user(django_user_model, *, staff: bool = False):
    account = django_user_model.objects.create_user(
        f"u-{uuid.uuid4().hex[:8]}", password="pw-z", is_staff=staff
    )
    throttle_cache().delete(f"throttle_search_user_{account.pk}")
    return account


def api_search(client: APIClient):
    image = SimpleUploadedFile("q.jpg", jpeg_bytes(), content_type="image/jpeg")
    # No model is active: 503 at once, after the throttle (which comes first).
    return client.post(SEARCH, {"image": image}, format="multipart")


def test_a_shopper_token_is_throttled_per_account_at_the_user_rate(rates, django_user_model):
    shopper = user(django_user_model)
    client = APIClient()
    client.force_authenticate(user=shopper)
    statuses = [api_search(client).status_code for _ in range(4)]
    assert statuses == [503, 503, 503, 429]
    body = api_search(client).json()
    assert body["error"]["code"] == "throttled"
    # Another shopper from the same address has a count of their own.
    other = APIClient()
    other.force_authenticate(user=user(django_user_model))
    assert api_search(other).status_code == 503


def test_a_signed_in_shopper_on_the_site_is_throttled(rates, client, django_user_model):
    client.force_login(user(django_user_model))
    statuses = []
    for _ in range(4):
        image = SimpleUploadedFile("q.jpg", jpeg_bytes(), content_type="image/jpeg")
        statuses.append(client.post("/", {"image": image}).status_code)
    assert statuses[-1] == 429
    assert statuses[:3].count(429) == 0


def test_staff_are_not_throttled(rates, django_user_model):
    client = APIClient()
    client.force_authenticate(user=user(django_user_model, staff=True))
    assert {api_search(client).status_code for _ in range(5)} == {503}


def test_the_user_rate_is_checked(settings):
    settings.RETRIEVAL_SEARCH_USER_THROTTLE = "lots"
    [error] = check_search_throttle()
    assert error.id == "retrieval.E005" and "RETRIEVAL_SEARCH_USER_THROTTLE" in error.msg
    settings.RETRIEVAL_SEARCH_USER_THROTTLE = "120/min"
    assert check_search_throttle() == []


def test_the_production_checklist_names_num_proxies():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()
    checklist = text[text.index("## Production checklist") :]
    assert "export DJANGO_NUM_PROXIES=" in checklist
