"""The shop's keyword search page, the search box on every page, and filters with facet
counts on the keyword and category pages (server-rendered, no JavaScript)."""

from __future__ import annotations

import html as htmllib
import json
import re

import pytest

from tests.factories import CategoryFactory, GarmentFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def shop(db):
    dresses = CategoryFactory(name="Dresses")
    shirts = CategoryFactory(name="Shirts")
    for i in range(3):
        GarmentFactory(title=f"Mango Women Red Maxi Dress {i}", category=dresses, colour="Red",
                       gender="Women", season="Summer", usage="Party")  # fmt: skip
    GarmentFactory(title="Vero Moda Women Blue Dress", category=dresses, colour="Blue",
                   gender="Women", season="Summer", usage="Casual")  # fmt: skip
    GarmentFactory(title="Arrow Men Red Shirt", category=shirts, colour="Red", gender="Men",
                   season="Fall", usage="Formal")  # fmt: skip
    return dresses


def titles(html: str) -> list[str]:
    return re.findall(r'<span class="card-title">(?:<span[^>]*>[^<]*</span>)?([^<]+)</span>', html)


def test_every_page_has_the_search_box(client, shop):
    for url in ("/", "/categories/", f"/categories/{shop.slug}/", "/search/?q=red"):
        html = client.get(url).content.decode()
        assert 'role="search"' in html and 'name="q"' in html, url


def test_keyword_search_lists_matches_with_facet_counts(client, shop):
    response = client.get("/search/", {"q": "red"})
    assert response.status_code == 200
    html = response.content.decode()
    assert len(titles(html)) == 4
    assert "4 garments" in html
    assert re.search(r'data-value="Women">Women <span class="count">\(3\)', html)
    assert re.search(r'data-value="Men">Men <span class="count">\(1\)', html)
    # Choosing a facet value narrows the list; the facet still offers the other value.
    html = client.get("/search/", {"q": "red", "gender": "women"}).content.decode()
    assert len(titles(html)) == 3 and all("Women" in t for t in titles(html))
    assert re.search(r'aria-current="true" class="chosen" data-value="Women"', html)
    assert re.search(r'data-value="Men">Men <span class="count">\(1\)', html)


def test_keyword_search_corrects_typos_and_explains_empty_results(client, shop):
    html = client.get("/search/", {"q": "drss"}).content.decode()
    assert 'id="corrected"' in html and "<strong>dress</strong>" in html
    assert len(titles(html)) == 4
    html = client.get("/search/", {"q": "zzqqxx"}).content.decode()
    assert 'id="empty-state"' in html and "Browse the categories" in html


@pytest.mark.parametrize(
    "params",
    [{"q": "red", "colour": "Purpel"}, {"q": "red", "gender": "x" * 5000}],
)
def test_unknown_filter_values_are_a_400_page_with_the_known_values(client, shop, params):
    response = client.get("/search/", params)
    assert response.status_code == 400
    html = response.content.decode()
    assert "choose one of" in html
    assert "x" * 100 not in html


def test_queries_are_shown_back_escaped(client, shop):
    q = '<script>alert("x")</script> red'
    response = client.get("/search/", {"q": q})
    assert response.status_code == 200
    html = response.content.decode()
    assert "<script>alert" not in html
    assert htmllib.escape(q, quote=False).replace('"', "&quot;") in html
    long = client.get("/search/", {"q": "a" * 10_000})
    assert long.status_code == 400 and b"at most 200" in long.content


def test_category_page_filters_and_facets(client, shop):
    html = client.get(f"/categories/{shop.slug}/").content.decode()
    assert len(titles(html)) == 4
    assert re.search(r'data-value="Red">Red <span class="count">\(3\)', html)
    assert re.search(r'data-value="Party">Party <span class="count">\(3\)', html)
    html = client.get(f"/categories/{shop.slug}/", {"colour": "Blue"}).content.decode()
    assert titles(html) == ["Vero Moda Women Blue Dress"]
    assert client.get(f"/categories/{shop.slug}/", {"season": "Monsoon"}).status_code == 400


def test_photo_search_form_offers_every_filter_with_counts(client, shop):
    html = client.get("/").content.decode()
    for name in ("gender", "colour", "season", "usage"):
        assert f'name="{name}"' in html
    assert '<option value="Red" data-label="Red">Red (4)</option>' in html
    assert '<option value="Women" data-label="Women">Women (4)</option>' in html
    # The category menu counts too (every category the form offers).
    assert f'<option value="{shop.slug}" data-label="Dresses">Dresses (4)</option>' in html
    assert re.search(
        r'<option value="shirts[-\w]*" data-label="Shirts">Shirts \(1\)</option>', html
    )


def test_photo_search_menus_count_with_the_chosen_filters(client, shop):
    """After a search the menus count with its filters (disjunctively: a menu's own choice is
    not applied to its counts); the results fragment carries them for the page's script."""
    html = client.post("/", {"gender": "Men", "colour": "Red"}).content.decode()
    assert '<option value="Red" data-label="Red" selected>Red (1)</option>' in html  # of men
    assert '<option value="Women" data-label="Women">Women (3)</option>' in html  # red ones
    assert 'data-label="Dresses">Dresses (0)</option>' in html
    assert 'data-label="Shirts">Shirts (1)</option>' in html
    assert 'data-label="Formal">Formal (1)</option>' in html and "Party (" not in html
    fragment = client.post("/", {"gender": "Men"}, headers={"X-Requested-With": "fetch"})
    found = re.search(r'id="menu-counts"[^>]*>(.*?)</script>', fragment.content.decode())
    assert found is not None
    counts = json.loads(found.group(1))
    assert counts["gender"] == {"Men": "Men (1)", "Women": "Women (4)"}
    assert counts["colour"] == {"Red": "Red (1)"}
    assert counts["category"][shop.slug] == "Dresses (0)"
