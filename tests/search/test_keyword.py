"""Keyword search, shopper filters and facet counts (retrieval.search.keyword, .filters,
.facets) on the real PostgreSQL: the search document kept by the trigger, prefix matching,
stemming, typo correction, filters inside the clustered search, disjunctive facet counts."""

from __future__ import annotations

from typing import cast

import numpy as np
import pytest

from retrieval import search
from retrieval.models import Category, FeatureModel, Garment
from retrieval.search import keyword
from tests.factories import (
    CategoryFactory,
    FeatureModelFactory,
    GarmentFactory,
    add_cluster_run,
    add_vectors,
)

pytestmark = pytest.mark.django_db


def found(q: str, queryset=None) -> list[str]:
    queryset = Garment.objects.all() if queryset is None else queryset
    return [g.sku for g in keyword.keyword_search(queryset=queryset, q=q).garments]


@pytest.fixture
def shop(db):
    shirts = CategoryFactory(name="Shirts")
    jeans = CategoryFactory(name="Jeans")
    dresses = CategoryFactory(name="Dresses")
    rows = [
        ("S1", "Turtle Check Men Navy Blue Shirt", shirts, "Navy Blue", "Men", "Fall", "Casual"),
        ("S2", "Arrow Men Formal White Shirt", shirts, "White", "Men", "Summer", "Formal"),
        ("S3", "Vero Moda Women Red Top", shirts, "Red", "Women", "Summer", "Casual"),
        ("J1", "Levis Men Blue Slim Fit", jeans, "Blue", "Men", "Winter", "Casual"),
        ("J2", "Jealous 21 Women Black Skinny", jeans, "Black", "Women", "Winter", "Casual"),
        ("D1", "Mango Women Red Maxi Dress", dresses, "Red", "Women", "Summer", "Party"),
    ]
    garments = {}
    for sku, title, category, colour, gender, season, usage in rows:
        garments[sku] = GarmentFactory(
            sku=sku,
            title=title,
            category=category,
            colour=colour,
            gender=gender,
            season=season,
            usage=usage,
            year=2012,
        )
    return garments


def test_every_word_must_match_as_a_prefix_with_stemming(shop):
    assert set(found("shirt")) == {"S1", "S2", "S3"}  # S3 through its category's name
    assert set(found("red")) == {"S3", "D1"}
    assert found("red dress") == ["D1"]
    assert set(found("jea")) == {"J1", "J2"}  # a prefix: "jea" -> Jeans, Jealous
    assert set(found("women summer")) == {"S3", "D1"}  # gender and season are in the document
    assert found("navy blue men") == ["S1"]
    assert found("purple") == []


def test_title_matches_rank_above_attribute_matches(shop):
    GarmentFactory(sku="P1", title="Casual Party Shirt", category=shop["S1"].category)
    # "party" is D1's usage (weight C) but P1's title (weight A).
    assert found("party")[0] == "P1"


def test_the_document_follows_renames_and_updates_that_bypass_save(shop):
    Category.objects.filter(name="Dresses").update(name="Gowns")
    assert found("gown") == ["D1"]
    assert found("dress") == ["D1"]  # still in its title
    Garment.objects.filter(sku="J1").update(colour="Olive")
    assert found("olive") == ["J1"]


def test_misspelt_words_are_corrected_when_nothing_matches(shop):
    matches = keyword.keyword_search(queryset=Garment.objects.all(), q="jeens womn")
    assert matches.terms == ("jeens", "womn")
    assert matches.corrected == ("jeans", "women")
    assert [g.sku for g in matches.garments] == ["J2"]
    # A word that matches is never "corrected".
    assert keyword.keyword_search(queryset=Garment.objects.all(), q="red").corrected == ()
    # Nothing close: no correction, no result.
    assert found("zzqqxx") == []


@pytest.mark.parametrize(
    "q",
    [
        "'; DROP TABLE retrieval_garment; --",
        "<script>alert(1)</script>",
        "a & b | !c <-> d:*",
        "((((",
        "\x00",
        "🙂 ✨",
        "the and of",
    ],
)
def test_hostile_queries_are_plain_words(shop, q):
    terms = keyword.query_terms(q)
    assert all(t.isalnum() for t in terms)
    found(q)  # no error
    assert Garment.objects.count() == 6


def test_long_queries_are_refused_with_a_message(shop):
    with pytest.raises(keyword.KeywordQueryError, match="at most 200"):
        keyword.query_terms("x" * 10_000)
    assert len(keyword.query_terms(" ".join(f"w{i}" for i in range(50)))) == keyword.MAX_TERMS


def test_filter_values_are_matched_to_the_catalogue_spelling(shop):
    filters = search.resolve_filters(colour=" navy  blue ", gender="WOMEN")
    assert filters == search.SearchFilters(colour="Navy Blue", gender="Women")
    with pytest.raises(search.UnknownFilterValue, match="choose one of Black, Blue"):
        search.resolve_filters(colour="Purpel")
    with pytest.raises(search.UnknownFilterValue):
        search.resolve_filters(season="x" * 10_000)
    assert not search.resolve_filters()


def test_facets_count_each_value_with_the_other_filters(shop):
    garments = Garment.objects.all()
    filters = search.SearchFilters(colour="Red")
    facets = {f.name: f for f in search.facet_counts(queryset=garments, filters=filters)}
    colours = {v.value: (v.count, v.selected) for v in facets["colour"].values}
    # The colour facet ignores the colour chosen: what choosing another colour would give.
    assert colours["Red"] == (2, True) and colours["Blue"] == (1, False)
    # Other facets count the red garments only.
    assert {v.value: v.count for v in facets["gender"].values} == {"Women": 2}
    assert {v.value: v.count for v in facets["category"].values} == {"shirts": 1, "dresses": 1}
    assert [v.value for v in facets["season"].values] == ["Summer"]
    # Values with most garments first; a chosen value with none left is still listed.
    both = search.SearchFilters(colour="Red", gender="Men")
    facets = {f.name: f for f in search.facet_counts(queryset=garments, filters=both)}
    assert [(v.value, v.count) for v in facets["gender"].values] == [("Women", 2), ("Men", 0)]
    assert [(v.value, v.count) for v in facets["colour"].values][:1] == [("Blue", 1)]


def test_facets_over_a_keyword_search(shop):
    matches = keyword.keyword_search(queryset=Garment.objects.all(), q="women")
    facets = search.facet_counts(
        queryset=matches.garments, filters=search.SearchFilters(), names=("usage",)
    )
    assert [(v.value, v.count) for v in facets[0].values] == [("Casual", 2), ("Party", 1)]


def test_filters_apply_inside_the_clustered_search_and_top_n_stays_complete(db):
    """Two clusters; the query sits in cluster A, whose garments are all Men's: a Women
    filter must still return N Women's garments (from cluster B), nearest first."""
    rng = np.random.default_rng(3)
    model = cast(FeatureModel, FeatureModelFactory())
    category = CategoryFactory(name="Tops")
    centres = np.zeros((2, 542), np.float32)
    centres[0, 0], centres[1, 1] = 1.0, 1.0
    garments: list[Garment] = []
    rows: list[np.ndarray] = []
    labels: dict[int, int] = {}
    for i in range(24):
        label = 0 if i < 12 else 1
        gender = "Men" if label == 0 else "Women"
        colour = "Red" if i % 2 else "Blue"
        garment = cast(Garment, GarmentFactory(category=category, gender=gender, colour=colour))
        garments.append(garment)
        rows.append(centres[label] + rng.normal(0, 0.05, 542).astype(np.float32))
        labels[garment.pk] = label
    vectors = np.stack(rows)
    add_vectors(model, garments, vectors)
    add_cluster_run(model, centres, labels)
    query = centres[0]
    plain = search.search_vectors(fused=query, model=model, top=5, probes=1)
    assert len(plain.hits) == 5
    assert {Garment.objects.get(pk=h.garment_id).gender for h in plain.hits} == {"Men"}
    women = search.SearchFilters(gender="Women", colour="Red")
    result = search.search_vectors(fused=query, model=model, top=5, probes=1, filters=women)
    assert len(result.hits) == 5
    expected = [
        g.pk
        for g, d in sorted(
            zip(garments, np.linalg.norm(vectors - query, axis=1), strict=True),
            key=lambda pair: pair[1],
        )
        if g.gender == "Women" and g.colour == "Red"
    ][:5]
    assert [h.garment_id for h in result.hits] == expected
    assert len(result.clusters) == 2  # a second cluster was probed to fill the page
