"""API contract of keyword search (``q``), the shopper filters (``gender``, ``colour``,
``season``, ``usage``, ``category``) and ``facets``, on the garment list, search by photo and
more like this; bad input answers 400 with a clear message (or an empty result), never 5xx."""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from retrieval.models import Garment
from tests.factories import CategoryFactory, GarmentFactory, jpeg_bytes

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("no_search_throttle")]

GARMENTS = "/api/v1/garments/"
SEARCH = "/api/v1/search/"


@pytest.fixture
def anon() -> APIClient:
    return APIClient()


@pytest.fixture
def shop(db):
    dresses = CategoryFactory(name="Dresses")
    shirts = CategoryFactory(name="Shirts")
    rows = [
        ("Mango Women Red Maxi Dress", dresses, "Red", "Women", "Summer", "Party", 2012),
        ("Vero Moda Women Blue Dress", dresses, "Blue", "Women", "Summer", "Casual", 2013),
        ("Arrow Men Red Formal Shirt", shirts, "Red", "Men", "Fall", "Formal", 2011),
        ("Turtle Men Navy Blue Shirt", shirts, "Navy Blue", "Men", "Winter", "Casual", None),
    ]
    made = {}
    for title, category, colour, gender, season, usage, year in rows:
        made[title] = GarmentFactory(
            title=title, category=category, colour=colour, gender=gender, season=season,
            usage=usage, year=year,
        )  # fmt: skip
    GarmentFactory(title="Hidden Red Dress", category=dresses, colour="Red", gender="Women",
                   status=Garment.Status.PENDING)  # fmt: skip
    return made


def error_of(response, status: int = 400) -> dict:
    assert response.status_code == status, response.content[:500]
    error = response.json()["error"]
    assert error["code"] == "invalid" and error["message"]
    return error


def titles(body: dict) -> list[str]:
    return [g["title"] for g in body["results"]]


def test_garments_carry_their_attributes(anon, shop):
    garment = anon.get(GARMENTS, {"q": "maxi"}).json()["results"][0]
    assert (garment["gender"], garment["colour"], garment["season"]) == ("Women", "Red", "Summer")
    assert (garment["usage"], garment["year"]) == ("Party", 2012)


def test_q_ranks_keyword_matches_and_reports_the_words(anon, shop):
    body = anon.get(GARMENTS, {"q": "red"}).json()
    assert set(titles(body)) == {"Mango Women Red Maxi Dress", "Arrow Men Red Formal Shirt"}
    assert body["count"] == 2  # the hidden (pending) red dress is not listed to shoppers
    assert body["keyword"] == {"terms": ["red"], "corrected": []}
    assert titles(anon.get(GARMENTS, {"q": "red dress"}).json()) == ["Mango Women Red Maxi Dress"]
    assert titles(anon.get(GARMENTS, {"q": "Form"}).json()) == ["Arrow Men Red Formal Shirt"]
    typo = anon.get(GARMENTS, {"q": "shrit"}).json()
    assert typo["keyword"] == {"terms": ["shrit"], "corrected": ["shirt"]}
    assert typo["count"] == 2
    nothing = anon.get(GARMENTS, {"q": "zzqqxx"}).json()
    assert nothing["count"] == 0 and nothing["results"] == []


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"gender": "Women"}, {"Mango Women Red Maxi Dress", "Vero Moda Women Blue Dress"}),
        ({"gender": "women"}, {"Mango Women Red Maxi Dress", "Vero Moda Women Blue Dress"}),
        ({"colour": "navy blue"}, {"Turtle Men Navy Blue Shirt"}),
        ({"season": "Summer", "usage": "Casual"}, {"Vero Moda Women Blue Dress"}),
        ({"usage": "Formal"}, {"Arrow Men Red Formal Shirt"}),
        ({"category": "shirts", "colour": "Red"}, {"Arrow Men Red Formal Shirt"}),
        ({"q": "dress", "colour": "Blue"}, {"Vero Moda Women Blue Dress"}),
    ],
)
def test_each_filter_narrows_the_list(anon, shop, params, expected):
    body = anon.get(GARMENTS, params).json()
    assert set(titles(body)) == expected
    assert body["count"] == len(expected)


def test_facets_count_each_value_with_the_other_filters(anon, shop):
    body = anon.get(GARMENTS, {"colour": "Red", "facets": "true"}).json()
    facets = body["facets"]
    assert set(facets) == {"gender", "colour", "season", "usage", "category"}
    colour = {f["value"]: (f["count"], f["selected"]) for f in facets["colour"]}
    assert colour == {"Red": (2, True), "Blue": (1, False), "Navy Blue": (1, False)}
    assert {f["value"]: f["count"] for f in facets["gender"]} == {"Women": 1, "Men": 1}
    assert {f["value"]: f["label"] for f in facets["category"]} == {
        "dresses": "Dresses",
        "shirts": "Shirts",
    }
    keyword = anon.get(GARMENTS, {"q": "dress", "facets": "true"}).json()["facets"]
    assert [(f["value"], f["count"]) for f in keyword["gender"]] == [("Women", 2)]
    assert "facets" not in anon.get(GARMENTS).json()


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"colour": "Purpel"}, "colour"),
        ({"gender": "Aliens"}, "gender"),
        ({"season": "Monsoon"}, "season"),
        ({"usage": "x" * 10_000}, "usage"),
        ({"gender": "Men\x00"}, "gender"),
        ({"category": "no-such-category"}, "category"),
        ({"q": "x" * 10_000}, "q"),
        ({"q": ""}, "q"),
        ({"colour": ""}, "colour"),
        ({"facets": "maybe"}, "facets"),
        ({"q": "red", "cursor": ""}, "cursor"),
    ],
)
def test_bad_list_parameters_are_a_400_naming_the_parameter(anon, shop, params, field):
    error = error_of(anon.get(GARMENTS, params))
    assert field in error["details"]
    assert "x" * 300 not in error["message"]


def test_unknown_values_list_the_known_ones(anon, shop):
    error = error_of(anon.get(GARMENTS, {"colour": "Purpel"}))
    assert error["message"] == (
        "colour: no garment has colour 'Purpel': choose one of Blue, Navy Blue, Red"
    )


@pytest.mark.parametrize(
    "q",
    [
        "'; DROP TABLE retrieval_garment; --",
        "red' OR '1'='1",
        "<script>alert(1)</script>",
        "<img src=x onerror=alert(1)>",
        "red & | ! :* ()",
        "🙂",
        "%00",
    ],
)
def test_sql_and_markup_in_q_are_just_words(anon, shop, q):
    response = anon.get(GARMENTS, {"q": q})
    assert response.status_code == 200
    assert Garment.objects.count() == 5
    assert all(t.isalnum() for t in response.json()["keyword"]["terms"])


def photo():
    return SimpleUploadedFile("p.jpg", jpeg_bytes(), content_type="image/jpeg")


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"colour": "Purpel"}, "colour"),
        ({"gender": "x" * 10_000}, "gender"),
        ({"season": ""}, "season"),
        ({"usage": "Nope"}, "usage"),
        ({"facets": "maybe"}, "facets"),
    ],
)
def test_search_by_photo_refuses_unknown_filter_values(anon, shop, data, field):
    error = error_of(anon.post(SEARCH, {"image": photo(), **data}, format="multipart"))
    assert field in error["details"]


@pytest.mark.parametrize(
    ("data", "field"),
    [({"colour": 12}, "colour"), ({"gender": ["Men"]}, "gender"), ({"facets": "yes"}, "facets")],
)
def test_search_by_photo_json_refuses_wrong_types(anon, shop, data, field):
    import base64

    image = base64.b64encode(jpeg_bytes()).decode()
    error = error_of(anon.post(SEARCH, {"image": image, **data}, format="json"))
    assert field in error["details"]


def test_more_like_this_refuses_unknown_filter_values(anon, shop):
    garment = shop["Mango Women Red Maxi Dress"]
    error = error_of(anon.get(f"{GARMENTS}{garment.pk}/similar/", {"colour": "Purpel"}))
    assert "colour" in error["details"]


def test_the_schema_documents_every_parameter_with_examples(anon):
    schema = anon.get("/api/v1/schema/", {"format": "json"}).json()
    listing = {p["name"]: p for p in schema["paths"][GARMENTS]["get"]["parameters"]}
    for name in ("q", "gender", "colour", "season", "usage", "category", "facets"):
        assert name in listing and listing[name].get("description"), name
        assert listing[name].get("examples") or listing[name].get("example"), name
    body = schema["paths"][SEARCH]["post"]["requestBody"]["content"]["multipart/form-data"]
    properties = schema["components"]["schemas"][body["schema"]["$ref"].split("/")[-1]][
        "properties"
    ]
    assert {"gender", "colour", "season", "usage", "category", "facets"} <= set(properties)
