"""API contract: the internal fields (`error`, `image_sha256` of a garment, `cluster` of a
search) are answered to staff only; shoppers, anonymous or signed in, never get them, in
garment reads, keyword search and search results alike."""

from __future__ import annotations

from typing import cast

import numpy as np
import pytest
from rest_framework.test import APIClient

from retrieval.models import FeatureModel, Garment
from retrieval.tokens import issue_token
from tests.factories import CategoryFactory, FeatureModelFactory, GarmentFactory, add_vectors

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("no_search_throttle")]

GARMENTS = "/api/v1/garments/"
STAFF_ONLY = {"error", "image_sha256"}
DIGEST = "ab" * 32


def client_with_token(user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {issue_token(user=user).key}")
    return client


@pytest.fixture(params=["anonymous", "shopper", "staff"])
def caller(request, django_user_model) -> tuple[str, APIClient]:
    if request.param == "anonymous":
        return request.param, APIClient()
    user = django_user_model.objects.create_user(
        f"{request.param}-api", password="pw-z", is_staff=request.param == "staff"
    )
    return request.param, client_with_token(user)


@pytest.fixture
def garment(db) -> Garment:
    """A ready garment as an import leaves it: its photo's digest among the attributes."""
    return cast(
        Garment,
        GarmentFactory(
            title="Internal Fields Red Dress",
            category=CategoryFactory(name="Internal Fields Dresses"),
            gender="Women",
            attributes={"image_sha256": DIGEST, "masterCategory": "Apparel"},
        ),
    )


def check_garment(who: str, shown: dict, garment: Garment) -> None:
    # Catalogue columns are for everyone; the catalogue's own bookkeeping is not.
    assert shown["attributes"] == {"masterCategory": "Apparel"}
    if who == "staff":
        assert set(shown) >= STAFF_ONLY
        assert (shown["error"], shown["image_sha256"]) == (garment.error, DIGEST)
    else:
        assert not STAFF_ONLY & set(shown), shown


def test_garment_reads_answer_internal_fields_to_staff_only(caller, garment):
    who, client = caller
    Garment.objects.filter(pk=garment.pk).update(error="a stale note from a retried indexing")
    garment.refresh_from_db()
    detail = client.get(f"{GARMENTS}{garment.pk}/")
    assert detail.status_code == 200, detail.content[:500]
    check_garment(who, detail.json(), garment)
    listed = client.get(GARMENTS, {"category": garment.category.slug}).json()["results"]
    assert [g["id"] for g in listed] == [garment.pk]
    check_garment(who, listed[0], garment)
    # Keyword search (with facets) answers garments the same way.
    found = client.get(GARMENTS, {"q": "internal fields", "facets": "true"}).json()
    assert [g["id"] for g in found["results"]] == [garment.pk]
    check_garment(who, found["results"][0], garment)


def test_a_garment_without_a_digest_answers_null_to_staff(caller):
    who, client = caller
    plain = cast(Garment, GarmentFactory(attributes={}))
    shown = client.get(f"{GARMENTS}{plain.pk}/").json()
    assert shown["attributes"] == {}
    if who == "staff":
        assert (shown["image_sha256"], shown["error"]) == (None, "")
    else:
        assert not STAFF_ONLY & set(shown)


def test_search_results_answer_the_clusters_to_staff_only(caller):
    """More like this (a search from stored vectors): `cluster` is for staff; the results
    themselves never carry the garments' internal fields."""
    who, client = caller
    category = CategoryFactory(name="Internal Fields Shirts")
    garments = GarmentFactory.create_batch(
        6, category=category, attributes={"image_sha256": DIGEST}, error=""
    )
    fused = np.random.default_rng(0).normal(size=(6, 542)).astype(np.float32)
    add_vectors(cast(FeatureModel, FeatureModelFactory()), garments, fused)
    response = client.get(f"{GARMENTS}{garments[0].pk}/similar/", {"top": 5})
    assert response.status_code == 200, response.content[:500]
    body = response.json()
    assert len(body["results"]) == 5
    assert all(not ({"cluster", "attributes"} | STAFF_ONLY) & set(hit) for hit in body["results"])
    if who == "staff":
        assert isinstance(body["cluster"], list)
    else:
        assert "cluster" not in body, body
    assert {"results", "model", "mode", "top", "took_ms"} <= set(body)


def test_the_schema_documents_the_internal_fields_as_staff_only():
    schema = APIClient().get("/api/v1/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert schema.status_code == 200
    components = schema.json()["components"]["schemas"]
    garment = components["Garment"]["properties"]
    for name in ("error", "image_sha256"):
        assert garment[name]["description"].startswith("Staff only"), garment[name]
    assert components["SearchResponse"]["properties"]["cluster"]["description"].startswith(
        "Staff only"
    )
    assert "cluster" not in components["SearchResponse"].get("required", [])
