"""Contract tests of the REST API (/api/v1/), against real PostgreSQL, Redis and a real trained
model over 300 garments of the shared sample (the ``trained_catalogue`` fixture): search,
garments, categories. Writes: test_api_writes.py; errors, CORS, schema and fuzzing:
test_api_schema.py."""

from __future__ import annotations

import base64
import uuid

import pytest

from retrieval.models import Category, FeatureModel, Garment
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


# --------------------------------------------------------------------------- search


@pytest.mark.slow
def test_search_by_uploaded_photo_finds_that_garment_first(anon, query):
    response = anon.post(SEARCH, {"image": photo(image_bytes(query))}, format="multipart")
    assert response.status_code == 200, response.content
    body = response.json()
    # `cluster` is internal: staff only (tests/api/test_staff_fields.py).
    assert set(body) == {"results", "model", "mode", "top", "took_ms"} | {
        "predicted_categories",
        "understood",
        "search_id",  # the search analytics' record (tests/analytics)
    }
    assert body["top"] == 10 and body["mode"] == "fused"
    assert body["model"] == FeatureModel.objects.get(active=True).name
    assert body["took_ms"] > 0
    results = body["results"]
    assert len(results) == 10
    assert all(set(hit) == HIT_FIELDS for hit in results)
    first = results[0]
    assert first["id"] == query.pk and first["sku"] == query.sku and first["title"] == query.title
    assert first["category"] == {
        "id": query.category_id,
        "slug": query.category.slug,
        "name": query.category.name,
    }
    assert first["colour"] == query.colour
    assert first["image_url"] == f"http://testserver{query.image.url}"
    assert first["score"] == pytest.approx(0.0, abs=1e-3)
    scores = [hit["score"] for hit in results]
    assert scores == sorted(scores, reverse=True) and all(s <= 1e-6 for s in scores)
    assert len({hit["id"] for hit in results}) == 10


@pytest.mark.slow
def test_staff_see_the_clusters_a_search_by_photo_probed(staff, anon, query):
    body = staff.post(SEARCH, {"image": photo(image_bytes(query))}, format="multipart").json()
    assert body["cluster"] and all(isinstance(c, int) for c in body["cluster"])
    assert body["results"][0]["id"] == query.pk
    shopper_body = anon.post(SEARCH, {"image": photo(image_bytes(query))}, format="multipart")
    assert "cluster" not in shopper_body.json()


@pytest.mark.slow
@pytest.mark.parametrize("data_url", [False, True], ids=["base64", "data-url"])
def test_search_by_base64_json(anon, query, data_url):
    encoded = base64.b64encode(image_bytes(query)).decode()
    if data_url:
        encoded = "data:image/jpeg;base64," + encoded
    response = anon.post(SEARCH, {"image": encoded, "top": 5}, format="json")
    assert response.status_code == 200, response.content
    assert [hit["id"] for hit in response.json()["results"]][:1] == [query.pk]
    assert len(response.json()["results"]) == 5


@pytest.mark.slow
@pytest.mark.parametrize("top", [5, 10, 20])
def test_search_returns_top_results(anon, query, top):
    response = anon.post(
        SEARCH, {"image": photo(image_bytes(query)), "top": str(top)}, format="multipart"
    )
    assert response.status_code == 200, response.content
    assert response.json()["top"] == top
    assert len(response.json()["results"]) == top


@pytest.mark.slow
@pytest.mark.parametrize("by", ["id", "slug"])
def test_search_within_a_category(anon, query, by):
    backpacks = Category.objects.get(slug="backpacks")
    category = backpacks.pk if by == "id" else backpacks.slug
    response = anon.post(
        SEARCH, {"image": photo(image_bytes(query)), "category": category}, format="multipart"
    )
    assert response.status_code == 200, response.content
    results = response.json()["results"]
    assert len(results) == 10
    assert {hit["category"]["slug"] for hit in results} == {"backpacks"}


@pytest.mark.slow
def test_search_shape_only_mode(anon, query):
    response = anon.post(
        SEARCH, {"image": photo(image_bytes(query)), "mode": "deep"}, format="multipart"
    )
    assert response.status_code == 200, response.content
    assert response.json()["mode"] == "deep"
    assert response.json()["results"][0]["id"] == query.pk


@pytest.mark.slow
def test_search_hides_garments_of_deactivated_categories_from_shoppers(anon, staff, query):
    Category.objects.filter(pk=query.category_id).update(active=False)
    data = {"image": photo(image_bytes(query)), "top": "20"}
    shown = anon.post(SEARCH, data, format="multipart").json()["results"]
    assert shown and query.category.slug not in {hit["category"]["slug"] for hit in shown}
    data = {"image": photo(image_bytes(query)), "top": "20"}
    assert staff.post(SEARCH, data, format="multipart").json()["results"][0]["id"] == query.pk


@pytest.mark.parametrize(
    ("field", "value"),
    [("top", "7"), ("top", "ten"), ("mode", "exact"), ("category", "no-such-category")],
)
def test_search_refuses_bad_options(anon, field, value):
    data = {"image": photo(jpeg_bytes()), field: value}
    error = error_of(anon.post(SEARCH, data, format="multipart"), 400, "invalid")
    assert list(error["details"]) == [field]
    assert error["message"].startswith(f"{field}: ")


def test_search_without_an_image(anon):
    error = error_of(anon.post(SEARCH, {"top": "5"}, format="multipart"), 400, "invalid")
    assert "image" in error["details"]


def test_search_refuses_a_file_that_is_not_an_image(anon):
    data = {"image": photo(b"just some notes\n" * 10, "notes.txt", "text/plain")}
    error = error_of(anon.post(SEARCH, data, format="multipart"), 400, "invalid_image")
    assert error["message"].startswith("that file is not an image")


def test_search_refuses_a_truncated_jpeg(anon):
    data = {"image": photo(jpeg_bytes(size=(400, 400))[:300])}
    error_of(anon.post(SEARCH, data, format="multipart"), 400, "invalid_image")


def test_search_refuses_an_image_too_large_in_bytes(anon, settings):
    settings.RETRIEVAL_MAX_UPLOAD_BYTES = 500
    data = jpeg_bytes(size=(200, 200), pattern=True)
    assert len(data) > 500
    error = error_of(
        anon.post(SEARCH, {"image": photo(data)}, format="multipart"), 413, "image_too_large"
    )
    assert error["message"].startswith("image too large")
    encoded = base64.b64encode(data).decode()
    error_of(anon.post(SEARCH, {"image": encoded}, format="json"), 413, "image_too_large")


def test_search_refuses_an_image_with_too_many_pixels(anon, settings):
    settings.RETRIEVAL_MAX_PIXELS = 100
    error = error_of(
        anon.post(SEARCH, {"image": photo(jpeg_bytes())}, format="multipart"),
        413,
        "image_too_large",
    )
    assert "pixels" in error["message"]


@pytest.mark.parametrize("payload", ["%%%not-base64%%%", "", "aGVsbG8="])
def test_search_refuses_bad_base64(anon, payload):
    response = anon.post(SEARCH, {"image": payload}, format="json")
    assert response.status_code == 400
    assert response.json()["error"]["code"] in {"invalid", "invalid_image"}


def test_search_refuses_other_content_types_and_malformed_json(anon):
    error_of(
        anon.generic("POST", SEARCH, "image=x", content_type="text/plain"),
        415,
        "unsupported_media_type",
    )
    error_of(
        anon.generic("POST", SEARCH, "{not json", content_type="application/json"),
        400,
        "parse_error",
    )
    error_of(anon.get(SEARCH), 405, "method_not_allowed")


def test_search_without_a_trained_model_is_503(anon):
    FeatureModel.objects.update(active=False)
    error = error_of(
        anon.post(SEARCH, {"image": photo(jpeg_bytes())}, format="multipart"),
        503,
        "search_unavailable",
    )
    assert "no trained feature model" in error["message"]


def test_anonymous_searches_are_throttled_but_staff_are_not(anon, staff, settings):
    from retrieval.http.throttle import throttle_cache

    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {"search": "2/min"},
    }
    address = f"198.51.100.{uuid.uuid4().int % 250 + 1}"  # documentation range: only a label
    key = f"throttle_search_{address}"
    throttle_cache().delete(key)
    try:
        FeatureModel.objects.update(active=False)  # fast answers; throttling comes first
        for _ in range(2):
            response = anon.post(
                SEARCH, {"image": photo(jpeg_bytes())}, format="multipart", REMOTE_ADDR=address
            )
            assert response.status_code == 503
        response = anon.post(
            SEARCH, {"image": photo(jpeg_bytes())}, format="multipart", REMOTE_ADDR=address
        )
        error = error_of(response, 429, "throttled")
        assert 0 < error["details"]["retry_after"] <= 60
        assert 0 < int(response["Retry-After"]) <= 60
        for _ in range(3):
            response = staff.post(
                SEARCH, {"image": photo(jpeg_bytes())}, format="multipart", REMOTE_ADDR=address
            )
            assert response.status_code == 503
    finally:
        throttle_cache().delete(key)


# --------------------------------------------------------------------------- garments


def test_garment_list_is_paginated_and_filterable(anon):
    shirts = CategoryFactory(name="Test Shirts API")
    ready = GarmentFactory.create_batch(3, category=shirts)
    GarmentFactory(category=shirts, status=Garment.Status.PENDING)
    for category in (shirts.pk, shirts.slug):
        response = anon.get(GARMENTS, {"category": category, "page_size": 2})
        assert response.status_code == 200
        body = response.json()
        assert set(body) == {"count", "next", "previous", "results"}
        assert body["count"] == 3  # shoppers see ready garments only
        assert len(body["results"]) == 2 and body["next"] and body["previous"] is None
        page2 = anon.get(body["next"]).json()
        listed = {g["id"] for g in body["results"] + page2["results"]}
        assert listed == {g.pk for g in ready}
    garment = body["results"][0]
    assert set(garment) == {
        "id",
        "sku",
        "title",
        "description",
        "category",
        "colour",
        *("gender", "season", "usage", "year"),
        "image_url",
        "attributes",
        "status",
        "created_at",
        "updated_at",
    }  # and for staff only: error, image_sha256 (tests/api/test_staff_fields.py)
    error = error_of(anon.get(GARMENTS, {"category": "nope"}), 400, "invalid")
    assert "category" in error["details"]
    error_of(anon.get(GARMENTS, {"page": 999}), 404, "not_found")


def test_staff_see_every_garment_and_can_filter_by_status(anon, staff):
    category = CategoryFactory(name="Test Status API")
    pending = GarmentFactory(category=category, status=Garment.Status.PENDING)
    GarmentFactory(category=category)
    assert staff.get(GARMENTS, {"category": category.slug}).json()["count"] == 2
    only = staff.get(GARMENTS, {"category": category.slug, "status": "pending"}).json()
    assert [g["id"] for g in only["results"]] == [pending.pk]
    assert staff.get(f"{GARMENTS}{pending.pk}/").json()["status"] == "pending"
    error_of(anon.get(f"{GARMENTS}{pending.pk}/"), 404, "not_found")
    error_of(staff.get(GARMENTS, {"status": "bogus"}), 400, "invalid")


@pytest.fixture
def listed_catalogue():
    """Garments for the list's pagination: two active categories, one inactive, pending and
    failed ones, and three garments sharing one created_at (ties are broken by id)."""
    shown, other = CategoryFactory(name="List A"), CategoryFactory(name="List B")
    hidden = CategoryFactory(name="List Hidden", active=False)
    garments = [GarmentFactory(category=shown if i % 3 else other) for i in range(9)]
    garments += [GarmentFactory(category=hidden) for _ in range(2)]
    garments += [
        GarmentFactory(category=shown, status=Garment.Status.PENDING),
        GarmentFactory(category=other, status=Garment.Status.FAILED),
    ]
    tied = [garments[2].pk, garments[5].pk, garments[11].pk]
    Garment.objects.filter(pk__in=tied).update(created_at=garments[5].created_at)
    return {"shown": shown, "other": other, "hidden": hidden}


def newest_first(queryset) -> list[int]:
    return list(queryset.order_by("-created_at", "-id").values_list("pk", flat=True))


def walk_pages(client, params: dict) -> list[int]:
    body = client.get(GARMENTS, params).json()
    ids = [g["id"] for g in body["results"]]
    while body["next"]:
        body = client.get(body["next"]).json()
        ids += [g["id"] for g in body["results"]]
    return ids


def test_garment_list_pages_count_exactly_for_shoppers_and_staff(anon, staff, listed_catalogue):
    # Other garments may be there (the module's trained catalogue): expectations come from SQL.
    visible = Garment.objects.filter(status=Garment.Status.READY, category__active=True)
    assert anon.get(GARMENTS).json()["count"] == visible.count()
    assert staff.get(GARMENTS).json()["count"] == Garment.objects.count()
    assert walk_pages(anon, {"page_size": 50}) == newest_first(visible)
    assert walk_pages(staff, {"page_size": 50}) == newest_first(Garment.objects.all())
    shown = listed_catalogue["shown"]
    body = anon.get(GARMENTS, {"category": shown.slug, "page_size": 2}).json()
    assert body["count"] == 6  # not the pending one
    assert walk_pages(anon, {"category": shown.slug, "page_size": 2}) == newest_first(
        visible.filter(category=shown)
    )
    assert staff.get(GARMENTS, {"category": shown.slug}).json()["count"] == 7
    pending = Garment.objects.filter(status=Garment.Status.PENDING).count()
    assert staff.get(GARMENTS, {"status": "pending"}).json()["count"] == pending
    assert anon.get(GARMENTS, {"status": "pending"}).json()["count"] == visible.count()


def test_staff_filter_the_list_by_an_inactive_category_shoppers_cannot(
    anon, staff, listed_catalogue
):
    hidden = listed_catalogue["hidden"]
    for ref in (hidden.slug, hidden.pk):
        body = staff.get(GARMENTS, {"category": ref}).json()
        assert sorted(g["id"] for g in body["results"]) == sorted(
            Garment.objects.filter(category=hidden).values_list("pk", flat=True)
        )
        assert body["count"] == 2
        response = anon.get(GARMENTS, {"category": ref})
        assert response.status_code == 400, response.content
        assert "no category" in str(response.json())


@pytest.mark.parametrize("size", [1, 2, 4, 100])
def test_cursor_pages_return_every_garment_once_in_list_order(anon, staff, listed_catalogue, size):
    visible = Garment.objects.filter(status=Garment.Status.READY, category__active=True)
    first = anon.get(GARMENTS, {"cursor": "", "page_size": size}).json()
    assert set(first) == {"next", "results"}
    for category in ("shown", "other"):
        mine = Garment.objects.filter(category=listed_catalogue[category])
        params = {"cursor": "", "category": listed_catalogue[category].pk, "page_size": size}
        assert walk_pages(staff, params) == newest_first(mine)
        assert walk_pages(anon, params) == newest_first(mine.filter(pk__in=visible))
    if size == 100:  # the whole database (hidden category included for staff)
        assert walk_pages(anon, {"cursor": ""}) == newest_first(visible)
        assert walk_pages(staff, {"cursor": "", "page_size": size}) == newest_first(
            Garment.objects.all()
        )
    assert walk_pages(staff, {"cursor": "", "status": "failed", "page_size": size}) == (
        newest_first(Garment.objects.filter(status=Garment.Status.FAILED))
    )


def test_cursor_walk_is_unaffected_by_garments_added_or_deleted_meanwhile(anon, listed_catalogue):
    shown = listed_catalogue["shown"]
    mine = Garment.objects.filter(category=shown, status=Garment.Status.READY)
    before = newest_first(mine)
    params = {"cursor": "", "category": shown.slug, "page_size": 2}
    body = anon.get(GARMENTS, params).json()
    seen = [g["id"] for g in body["results"]]
    added = GarmentFactory(category=shown)  # newer than every cursor
    Garment.objects.filter(pk=before[-1]).delete()
    while body["next"]:
        assert "page=" not in body["next"]
        body = anon.get(body["next"]).json()
        seen += [g["id"] for g in body["results"]]
    assert seen == before[:-1]
    assert added.pk not in seen
    # Page numbers shift instead (documented): the new garment is page 1's first.
    first = anon.get(GARMENTS, {"category": shown.slug, "page_size": 2}).json()["results"]
    assert first[0]["id"] == added.pk


@pytest.mark.parametrize("cursor", ["%%%", "bm9wZQ", "MjAyNi0wMS0wMXwx", "eHx5"])
def test_bad_cursors_are_refused(anon, cursor):
    error = error_of(anon.get(GARMENTS, {"cursor": cursor}), 400, "invalid")
    assert "cursor" in error["details"]


def test_garment_detail_and_missing_ids(anon):
    garment = GarmentFactory(title="Linen <b>shirt</b>", colour="Navy Blue")
    response = anon.get(f"{GARMENTS}{garment.pk}/")
    assert response.status_code == 200
    body = response.json()
    assert body["id"] == garment.pk and body["title"] == "Linen <b>shirt</b>"
    assert body["image_url"].startswith("http://testserver/media/")
    for missing in (0, 2**62, 2**70, -3):
        error_of(anon.get(f"{GARMENTS}{missing}/"), 404, "not_found")
    error_of(anon.get(f"{GARMENTS}abc/"), 404, "not_found")
    # Inactive categories are hidden from shoppers.
    Category.objects.filter(pk=garment.category_id).update(active=False)
    error_of(anon.get(f"{GARMENTS}{garment.pk}/"), 404, "not_found")


@pytest.mark.slow
def test_similar_garments(anon, query):
    response = anon.get(f"{GARMENTS}{query.pk}/similar/", {"top": 5})
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["top"] == 5 and len(body["results"]) == 5
    assert query.pk not in {hit["id"] for hit in body["results"]}
    assert all(set(hit) == HIT_FIELDS for hit in body["results"])
    deep = anon.get(f"{GARMENTS}{query.pk}/similar/", {"mode": "deep"}).json()
    assert deep["mode"] == "deep" and len(deep["results"]) == 10
    error_of(anon.get(f"{GARMENTS}{query.pk}/similar/", {"top": 3}), 400, "invalid")
    error_of(anon.get(f"{GARMENTS}0/similar/"), 404, "not_found")


def test_similar_of_an_unindexed_garment_or_without_a_model(staff, anon):
    pending = GarmentFactory(status=Garment.Status.PENDING)
    error_of(staff.get(f"{GARMENTS}{pending.pk}/similar/"), 409, "not_indexed")
    ready = GarmentFactory()
    FeatureModel.objects.update(active=False)
    error_of(anon.get(f"{GARMENTS}{ready.pk}/similar/"), 503, "search_unavailable")


# --------------------------------------------------------------------------- categories


def test_category_list_and_detail(anon, staff):
    visible = CategoryFactory(name="Test Visible")
    hidden = CategoryFactory(name="Test Hidden", active=False)
    GarmentFactory.create_batch(2, category=visible)
    GarmentFactory(category=visible, status=Garment.Status.FAILED)
    listed = {c["id"]: c for c in anon.get(CATEGORIES).json()}
    assert listed[visible.pk] == {
        "id": visible.pk,
        "name": "Test Visible",
        "slug": "test-visible",
        "parent": None,
        "active": True,
        "garment_count": 2,
    }
    assert hidden.pk not in listed
    assert hidden.pk in {c["id"] for c in staff.get(CATEGORIES).json()}
    assert anon.get(f"{CATEGORIES}{visible.pk}/").json()["slug"] == "test-visible"
    error_of(anon.get(f"{CATEGORIES}{hidden.pk}/"), 404, "not_found")
