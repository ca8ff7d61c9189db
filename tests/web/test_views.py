"""The shoppers' pages, through Django's test client: search by photo (with and without the
page's script), browse by category, a garment's page with similar items, messages, escaping."""

from __future__ import annotations

import re
import uuid

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from retrieval.models import Category, FeatureModel, Garment
from tests.factories import CategoryFactory, FeatureModelFactory, GarmentFactory, jpeg_bytes

pytestmark = pytest.mark.django_db

FETCH = {"HTTP_X_REQUESTED_WITH": "fetch"}
XSS = '<script>alert("x")</script>'


@pytest.fixture(autouse=True)
def no_search_throttle(settings):
    rates = {"search": None}
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": rates}


@pytest.fixture
def query(trained_catalogue) -> Garment:
    return (
        Garment.objects.filter(pk__in=trained_catalogue.ids[Garment], category__slug="tshirts")
        .order_by("sku")
        .first()
    )


def upload(garment_or_bytes, name="photo.jpg", content_type="image/jpeg"):
    if isinstance(garment_or_bytes, Garment):
        with garment_or_bytes.image.open("rb") as handle:
            garment_or_bytes = handle.read()
    return SimpleUploadedFile(name, garment_or_bytes, content_type=content_type)


def result_ids(html: str) -> list[int]:
    return [int(i) for i in re.findall(r'<li class="card" data-garment-id="(\d+)"', html)]


# --------------------------------------------------------------------------- the search page


def test_home_offers_every_way_to_give_a_photo(client):
    FeatureModel.objects.update(active=False)
    FeatureModelFactory()  # an active model: search is available
    GarmentFactory(category=CategoryFactory(name="Test Tees"))
    response = client.get("/")
    assert response.status_code == 200
    html = response.content.decode()
    assert 'enctype="multipart/form-data"' in html
    assert re.search(r'<input[^>]*type="file"[^>]*id="photo-file"[^>]*accept="image/\*"', html)
    assert re.search(r'<input[^>]*id="photo-camera"[^>]*capture="environment"', html)
    assert '<label for="photo-file"' in html and '<label for="photo-camera"' in html
    for n in (5, 10, 20):
        assert re.search(rf'<input type="radio" name="top" value="{n}"', html)
    assert re.search(r'<input type="radio" name="top" value="10"[^>]*checked', html)
    assert '<label for="id_category">Category</label>' in html
    assert re.search(r'<input type="checkbox" name="colour_matters"[^>]*checked', html)
    assert "/static/js/search.js" in html and "/static/css/site.css" in html
    assert "http://" not in html.replace("http://testserver", "")  # no CDN, no remote asset
    assert "not available yet" not in html
    assert re.search(r'href="/categories/test-tees/">Test Tees <span class="count">1<', html)


def test_home_says_when_no_model_is_trained(client):
    FeatureModel.objects.update(active=False)
    html = client.get("/").content.decode()
    assert "Search by photo is not available yet" in html


@pytest.mark.slow
def test_search_without_script_renders_the_whole_page(client, query):
    response = client.post("/", {"image": upload(query), "top": "10", "colour_matters": "on"})
    assert response.status_code == 200
    html = response.content.decode()
    assert "<html" in html and 'id="results-heading"' in html
    ids = result_ids(html)
    assert len(ids) == 10 and ids[0] == query.pk
    # Result links name the recorded search (its clicks count: tests/analytics).
    assert re.search(rf'href="/garments/{query.pk}/\?search=[0-9a-f-]{{36}}"', html)
    assert "shape and colour" in html and re.search(r"in \d+ ms", html)


@pytest.mark.slow
def test_search_fragment_for_the_script(client, query):
    response = client.post(
        "/", {"image": upload(query), "top": "20", "colour_matters": "on"}, **FETCH
    )
    assert response.status_code == 200
    assert response["X-Search-Fragment"] == "1"
    html = response.content.decode()
    assert "<html" not in html and "Top 20 matches" in html
    assert len(result_ids(html)) == 20
    # Each result: image, title, category and colour; no raw score for shoppers (#15).
    card = re.search(r'<li class="card".*?</li>', html, re.S).group(0)
    assert "<img " in card and query.title in card
    assert "Category" in card and query.category.name in card
    assert "Colour" in card and "Score" not in card


@pytest.mark.slow
@pytest.mark.parametrize("top", ["5", "10", "20"])
def test_search_top_switch(client, query, top):
    response = client.post(
        "/", {"image": upload(query), "top": top, "colour_matters": "on"}, **FETCH
    )
    assert len(result_ids(response.content.decode())) == int(top)


@pytest.mark.slow
def test_search_category_filter_and_colour_toggle(client, query):
    response = client.post(
        "/", {"image": upload(query), "top": "5", "category": "backpacks"}, **FETCH
    )
    html = response.content.decode()
    ids = result_ids(html)
    assert len(ids) == 5
    assert set(Garment.objects.filter(pk__in=ids).values_list("category__slug", flat=True)) == {
        "backpacks"
    }
    assert "shape only" in html  # no "colour" in the post: the toggle is off
    assert "in Backpacks" in html


BAD_INPUT = {
    "no-file": (dict, "Choose a photo to search with."),
    "not-an-image": (
        lambda: {"image": upload(b"hello, not a photo", "notes.txt", "text/plain")},
        "that file is not an image",
    ),
    "corrupt": (lambda: {"image": upload(b"\xff\xd8\xff\xe0truncated")}, "the image file is"),
    "bad-top": (lambda: {"image": upload(jpeg_bytes()), "top": "7"}, "Select a valid choice"),
    "nul-in-category": (
        lambda: {"image": upload(jpeg_bytes()), "category": "no\x00such"},
        "Select a valid choice",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
@pytest.mark.parametrize("script", [False, True], ids=["page", "fragment"])
def test_search_explains_bad_input(client, case, script):
    make_data, message = BAD_INPUT[case]
    response = client.post("/", make_data(), **(FETCH if script else {}))
    assert response.status_code == 400
    html = response.content.decode()
    assert 'role="alert"' in html and message in html


def test_search_explains_an_image_too_large(client, settings):
    settings.RETRIEVAL_MAX_UPLOAD_BYTES = 400
    response = client.post("/", {"image": upload(jpeg_bytes(size=(200, 200), pattern=True))})
    assert response.status_code == 413
    assert "image too large" in response.content.decode()


def test_search_without_a_model_explains_and_offers_browsing(client):
    FeatureModel.objects.update(active=False)
    response = client.post("/", {"image": upload(jpeg_bytes())}, **FETCH)
    assert response.status_code == 503
    html = response.content.decode()
    assert "not available yet" in html and 'href="/categories/"' in html


def test_search_is_throttled_for_anonymous_shoppers(client, settings):
    from retrieval.http.throttle import throttle_cache

    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {"search": "1/min"},
    }
    address = f"203.0.113.{uuid.uuid4().int % 250 + 1}"  # documentation range: only a label
    throttle_cache().delete(f"throttle_search_{address}")
    try:
        FeatureModel.objects.update(active=False)
        first = client.post("/", {"image": upload(jpeg_bytes())}, REMOTE_ADDR=address, **FETCH)
        assert first.status_code == 503
        second = client.post("/", {"image": upload(jpeg_bytes())}, REMOTE_ADDR=address, **FETCH)
        assert second.status_code == 429
        assert "Too many searches" in second.content.decode()
    finally:
        throttle_cache().delete(f"throttle_search_{address}")


@pytest.mark.slow
def test_titles_from_imports_stay_escaped_everywhere(client, query):
    Garment.objects.filter(pk=query.pk).update(title=XSS, colour="<i>red</i>")
    Category.objects.filter(pk=query.category_id).update(name="Tees <b>bold</b>")
    pages = [
        client.post("/", {"image": upload(query), "colour_matters": "on"}, **FETCH),
        client.get(f"/garments/{query.pk}/"),
        client.get(f"/categories/{query.category.slug}/"),
        client.get("/categories/"),
        client.get("/"),
    ]
    for response in pages:
        html = response.content.decode()
        assert response.status_code == 200
        assert "<script>alert" not in html and "<b>bold</b>" not in html and "<i>red" not in html
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in pages[0].content.decode()
    assert "Tees &lt;b&gt;bold&lt;/b&gt;" in pages[3].content.decode()


# --------------------------------------------------------------------------- browsing


def test_categories_are_browsable_and_paginated(client):
    category = CategoryFactory(name="Test Coats")
    GarmentFactory.create_batch(30, category=category)
    GarmentFactory(category=category, status=Garment.Status.PENDING)
    listing = client.get("/categories/").content.decode()
    assert re.search(r'href="/categories/test-coats/">Test Coats <span class="count">30', listing)
    page1 = client.get("/categories/test-coats/")
    html = page1.content.decode()
    assert page1.status_code == 200
    assert len(result_ids(html)) == 24 and "30 garments, page 1 of 2" in html
    assert 'rel="next" href="?page=2"' in html
    page2 = client.get("/categories/test-coats/", {"page": 2}).content.decode()
    assert len(result_ids(page2)) == 6 and 'rel="prev"' in page2
    assert not set(result_ids(html)) & set(result_ids(page2))
    # Out-of-range or junk page numbers show the nearest page rather than an error.
    assert client.get("/categories/test-coats/", {"page": 99}).status_code == 200
    assert client.get("/categories/test-coats/", {"page": "x"}).status_code == 200


def test_hidden_categories_and_unknown_pages_are_404(client, admin_client):
    hidden = CategoryFactory(name="Test Hidden Coats", active=False)
    assert client.get(f"/categories/{hidden.slug}/").status_code == 404
    assert admin_client.get(f"/categories/{hidden.slug}/").status_code == 200
    response = client.get("/categories/no-such-thing/")
    assert response.status_code == 404 and "Page not found" in response.content.decode()
    assert client.get("/garments/999999999/").status_code == 404


@pytest.mark.slow
def test_garment_page_shows_details_and_similar_items(client, query):
    response = client.get(f"/garments/{query.pk}/")
    assert response.status_code == 200
    html = response.content.decode()
    assert f"<h1>{query.title}</h1>" in html
    assert f'src="{query.image.url}"' in html
    assert query.colour in html and query.sku in html and "Gender" in html
    similar = result_ids(html)
    assert len(similar) == 10 and query.pk not in similar
    assert len(result_ids(client.get(f"/garments/{query.pk}/", {"top": 5}).content.decode())) == 5
    shape_only = client.get(f"/garments/{query.pk}/", {"colour": "off"}).content.decode()
    assert len(result_ids(shape_only)) == 10
    assert 'id="similar-colour" name="colour" value="on">' in shape_only  # unchecked


def test_garment_page_without_model_or_index(client, admin_client):
    garment = GarmentFactory()
    FeatureModel.objects.update(active=False)
    html = client.get(f"/garments/{garment.pk}/").content.decode()
    assert "Similar items appear once the catalogue" in html
    pending = GarmentFactory(status=Garment.Status.PENDING)
    assert client.get(f"/garments/{pending.pk}/").status_code == 404
    html = admin_client.get(f"/garments/{pending.pk}/").content.decode()
    assert "This garment is pending" in html
