"""Example photos (issue #14) train the model and are never shown: no photo search, keyword
search, category page or API list returns or links one, even with the photo itself as query."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from retrieval import catalogue
from retrieval.models import ExamplePhoto, Garment
from tests.catalogue_zips import example_row, make_examples
from tests.factories import jpeg_bytes

pytestmark = [pytest.mark.django_db, pytest.mark.slow]


@pytest.fixture
def example(trained_catalogue, tmp_path, no_search_throttle) -> Iterator[ExamplePhoto]:
    tee = Garment.objects.filter(
        pk__in=trained_catalogue.ids[Garment], category__name="Tshirts"
    ).first()
    source = make_examples(
        tmp_path / "examples.zip",
        example_row("shopperkey1", "Tshirts", sender="someone"),
        {"shopperkey1.jpg": jpeg_bytes((30, 120, 40), size=(180, 240), pattern=True)},
    )
    report = catalogue.import_example_photos(source=source, holdout=0.0)
    assert report.created == 1 and tee is not None
    photo = ExamplePhoto.objects.get()
    yield photo
    photo.image.delete(save=False)


def _photo(example: ExamplePhoto) -> SimpleUploadedFile:
    with example.image.open("rb") as handle:
        return SimpleUploadedFile("photo.jpg", handle.read(), content_type="image/jpeg")


def _assert_hidden(text: str, example: ExamplePhoto, *, echoes_query: bool = False) -> None:
    assert "examples/" not in text and (example.image.name or "examples/") not in text
    if not echoes_query:  # a keyword page repeats what was asked
        assert example.key not in text


def test_photo_search_with_the_example_itself_returns_only_garments(example, client):
    garment_ids = set(Garment.objects.values_list("id", flat=True))
    api = APIClient().post("/api/v1/search/", {"image": _photo(example)}, format="multipart")
    assert api.status_code == 200, api.content
    hits = api.json()["results"]
    assert hits and {hit["id"] for hit in hits} <= garment_ids
    _assert_hidden(api.content.decode(), example)

    page = client.post("/", {"image": _photo(example), "top": "20"})
    assert page.status_code == 200
    html = page.content.decode()
    assert 'class="card"' in html  # results were shown: garments, not the photo
    _assert_hidden(html, example)


def test_keyword_search_category_page_and_api_list_never_name_an_example(example, client):
    by_key = client.get("/search/", {"q": example.key}).content.decode()
    assert 'id="empty-state"' in by_key
    _assert_hidden(by_key, example, echoes_query=True)
    for url, params in (
        ("/search/", {"q": "shopper photo tshirts"}),
        ("/categories/tshirts/", {}),
        ("/categories/", {}),
    ):
        response = client.get(url, params)
        assert response.status_code == 200, url
        _assert_hidden(response.content.decode(), example, echoes_query=bool(params))

    api = APIClient()
    url, seen = "/api/v1/garments/", 0
    while url:
        response = api.get(url)
        assert response.status_code == 200
        _assert_hidden(response.content.decode(), example)
        body = response.json()
        seen += len(body["results"])
        url = body["next"]
    assert seen == Garment.objects.filter(status=Garment.Status.READY).count()
    by_category = api.get("/api/v1/garments/", {"category": "tshirts"})
    _assert_hidden(by_category.content.decode(), example)
