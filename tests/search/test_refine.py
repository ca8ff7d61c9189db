"""Refining a search (issue #15): colour words, category words, title words, Rocchio feedback,
predicted categories. Real PostgreSQL/pgvector, hand-made vectors (no CNN)."""

from __future__ import annotations

from typing import cast

import numpy as np
import pytest

from retrieval import search
from retrieval.features import colour_feature
from retrieval.models import BackboneFeature, Category, FeatureModel, Garment
from retrieval.search import refine
from tests.factories import CategoryFactory, FeatureModelFactory, GarmentFactory, add_vectors

pytestmark = pytest.mark.django_db

RGB = {"Red": (200, 30, 30), "Navy Blue": (20, 30, 90), "Blue": (40, 90, 220)}
WEIGHT = 0.6


@pytest.fixture(autouse=True)
def plain_ranking(settings):
    """The paper's ranking unless a test asks for the re-rank; no cached colours between
    tests (each builds its own catalogue)."""
    settings.RETRIEVAL_RERANK = "none"
    refine.clear_cache()
    yield
    refine.clear_cache()


def deep_for(category: str, rng, spread: float = 0.02) -> np.ndarray:
    """A unit deep vector near its category's axis."""
    axis = {"Tops": 0, "Shoes": 1, "Dresses": 2}[category]
    v = rng.normal(0, spread, 512)
    v[axis] += 1.0
    return v / np.linalg.norm(v)


@pytest.fixture
def catalogue():
    """Tops and Shoes in Red, Navy Blue and Blue (4 each), with stored raw RGB and vectors
    made the way indexing makes them (fused = [deep, 0.6 x lab_mean colour])."""
    rng = np.random.default_rng(0)
    model = cast(FeatureModel, FeatureModelFactory(classes=["Dresses", "Shoes", "Tops"]))
    garments, vectors = [], []
    for category in ("Tops", "Shoes"):
        cat = CategoryFactory(name=category)
        for colour, rgb in RGB.items():
            for i in range(4):
                g = cast(
                    Garment,
                    GarmentFactory(category=cat, colour=colour, title=f"{colour} {category} {i}"),
                )
                raw = np.clip(np.array(rgb) + rng.normal(0, 6, (10, 3)), 0, 255)
                BackboneFeature.objects.create(
                    garment=g,
                    backbone=model.backbone,
                    version=1,
                    image_name=str(g.image.name),
                    pooled=[0.0, 1.0],
                    positions=list(range(10)),
                    rgb=raw.reshape(-1).tolist(),
                )
                feature = colour_feature(raw[None], variant="lab_mean")[0]
                vectors.append(np.concatenate([deep_for(category, rng), WEIGHT * feature]))
                garments.append(g)
    add_vectors(model, garments, np.vstack(vectors).astype(np.float32))
    CategoryFactory(name="Dresses")  # no garments: a category word can still name it
    return model, garments, np.vstack(vectors).astype(np.float32)


def labels(hits) -> list[tuple[str, str]]:
    by_id = {g.pk: g for g in Garment.objects.select_related("category")}
    return [(by_id[h.garment_id].category.name, by_id[h.garment_id].colour) for h in hits]


def the(garments, category: str, colour: str) -> list[Garment]:
    return [g for g in garments if g.category.name == category and g.colour == colour]


# --------------------------------------------------------------------------- words


def test_words_name_the_longest_colour_a_category_and_leave_the_rest(catalogue):
    categories = Category.objects.all()
    words = refine.parse_query("This, but in NAVY blue cotton dress!", categories=categories)
    assert words.colour == "Navy Blue"  # not "Blue": the longest name wins
    assert words.category is not None and words.category.name == "Dresses"  # singular form
    assert words.words == ("cotton",)  # "this", "but", "in" carry no meaning
    assert refine.parse_query("blue t-shirt", categories=categories).colour == "Blue"
    plain = refine.parse_query("'; DROP TABLE retrieval_garment; --", categories=categories)
    assert plain.colour is None and plain.category is None
    assert plain.words == ("drop", "table", "retrieval", "garment")


def test_a_colour_needs_enough_garments_to_be_asked_for(catalogue):
    GarmentFactory(colour="Mauve")  # one garment: no typical colour to ask for
    assert "Mauve" not in refine.catalogue_colours()
    assert {"Red", "Navy Blue", "Blue"} <= set(refine.catalogue_colours())


def test_the_colour_part_is_made_from_the_colours_median_raw_rgb(catalogue):
    model, garments, _ = catalogue
    raw = np.array(
        [BackboneFeature.objects.get(garment=g).rgb for g in garments if g.colour == "Red"]
    ).reshape(-1, 10, 3)
    expected = WEIGHT * colour_feature(np.median(raw, axis=0)[None], variant="lab_mean")[0]
    part = refine.colour_part(model=model, colour="red")
    assert part is not None and part.shape == (30,)
    np.testing.assert_allclose(part, expected, rtol=1e-5, atol=1e-6)
    fused = np.ones(542, np.float32)
    replaced = refine.with_colour(fused, part)
    assert (replaced[:512] == 1).all() and np.allclose(replaced[512:], part)
    assert refine.colour_part(model=model, colour="Mauve") is None


def test_a_colour_word_keeps_the_photos_shape_and_changes_its_colour(catalogue):
    model, garments, vectors = catalogue
    query = the(garments, "Tops", "Red")[0]
    fused = vectors[garments.index(query)]
    probs = np.array([0.0, 0.0, 1.0], np.float32)
    common = {"fused": fused, "probs": probs, "model": model, "top": 4}
    common["exclude_garment_ids"] = (query.pk,)
    plain = search.search_refined(**common)
    assert labels(plain.result.hits)[:3] == [("Tops", "Red")] * 3  # the other red tops
    words = refine.QueryWords(text="in blue", colour="Blue")
    # The vector alone (no colour labels): blue tops, not blue shoes, not red tops.
    vector_only = search.search_refined(understood=words, colour_labels=False, **common)
    assert vector_only.colour_applied
    assert labels(vector_only.result.hits) == [("Tops", "Blue")] * 4
    shipped = search.search_refined(understood=words, **common)
    assert labels(shipped.result.hits) == [("Tops", "Blue")] * 4
    assert shipped.colour_matches == 4
    # A colour word in "shape only" mode asks for the colour: the search is fused.
    deep = search.search_refined(understood=words, mode="deep", **common)
    assert deep.result.mode == "fused" and labels(deep.result.hits) == [("Tops", "Blue")] * 4


def test_category_and_title_words(catalogue):
    model, garments, vectors = catalogue
    query = the(garments, "Tops", "Red")[0]
    fused, probs = vectors[garments.index(query)], np.array([0, 0, 1], np.float32)
    shoes = refine.parse_query("shoes", categories=Category.objects.all())
    found = search.search_refined(fused=fused, probs=probs, model=model, understood=shoes, top=5)
    assert {c for c, _ in labels(found.result.hits)} == {"Shoes"}
    # A title word lifts the garments that hold it; it never empties the page.
    titled = Garment.objects.filter(category__name="Tops", colour="Blue").earliest("id")
    Garment.objects.filter(pk=titled.pk).update(title="Blue linen top")
    words = refine.QueryWords(text="linen", words=("linen",))
    found = search.search_refined(fused=fused, probs=probs, model=model, understood=words, top=5)
    assert found.result.hits[0].garment_id == titled.pk and found.boosted == 1
    assert len(found.result.hits) == 5
    nothing = refine.QueryWords(text="velvet", words=("velvet",))
    found = search.search_refined(fused=fused, probs=probs, model=model, understood=nothing, top=5)
    assert len(found.result.hits) == 5 and found.boosted == 0


def test_title_words_and_lift_order():
    assert refine.title_holds("Roadster Men Navy T-Shirt", ("t-shirt",))
    assert refine.title_holds("Roadster Men Navy T-Shirt", ("navy", "roadst"))
    assert not refine.title_holds("Roadster Men Navy T-Shirt", ("women",))
    hits = [search.Hit(i, float(i)) for i in range(6)]
    ordered, counts = refine.lift(
        hits, top=4, tests=[lambda h: h.garment_id >= 2, lambda h: h.garment_id % 2 == 1]
    )
    # First test first, then the second, then distance.
    assert [h.garment_id for h in ordered] == [3, 5, 2, 4]
    assert counts == [4, 2]


def test_colour_words_keep_the_reranked_category_first(catalogue, settings):
    settings.RETRIEVAL_RERANK = "category"
    settings.RETRIEVAL_RERANK_MIN_CONFIDENCE = 0.0
    model, garments, vectors = catalogue
    query = the(garments, "Tops", "Red")[0]
    found = search.search_refined(
        fused=vectors[garments.index(query)],
        probs=np.array([0.0, 0.1, 0.9], np.float32),
        model=model,
        understood=refine.QueryWords(text="navy blue", colour="Navy Blue"),
        top=6,
        exclude_garment_ids=(query.pk,),
    )
    # The 4 navy tops, then tops of the nearest other colour: never navy shoes first.
    got = labels(found.result.hits)
    assert got[:4] == [("Tops", "Navy Blue")] * 4
    assert all(category == "Tops" for category, _ in got)


# --------------------------------------------------------------------------- feedback


def test_rocchio_moves_towards_liked_and_away_from_disliked():
    q = np.zeros(542, np.float32)
    liked, disliked = np.zeros((2, 542), np.float32), np.zeros((1, 542), np.float32)
    liked[0, 0], liked[1, 0], disliked[0, 1] = 1.0, 3.0, 1.0
    moved = refine.rocchio(q, refine.Feedback(like_ids=(1, 2), liked=liked, disliked=disliked,
                                              dislike_ids=(3,)))  # fmt: skip
    scale = 1 + refine.LIKE_WEIGHT - refine.DISLIKE_WEIGHT
    assert moved[0] == pytest.approx(refine.LIKE_WEIGHT * 2.0 / scale)
    assert moved[1] == pytest.approx(-refine.DISLIKE_WEIGHT / scale)
    assert np.array_equal(refine.rocchio(q, refine.Feedback()), q)


def test_feedback_refines_and_disliked_garments_never_come_back(catalogue):
    model, garments, vectors = catalogue
    query = the(garments, "Tops", "Red")[0]
    fused, probs = vectors[garments.index(query)], np.array([0, 0, 1], np.float32)
    navy_shoe, red_top = the(garments, "Shoes", "Navy Blue")[0], the(garments, "Tops", "Red")[1]
    feedback = refine.load_feedback(model=model, like=[navy_shoe.pk], dislike=[red_top.pk])
    assert feedback.liked.shape == (1, 542) and feedback.liked_categories == ("Shoes",)
    before = search.search_refined(fused=fused, probs=probs, model=model, top=24)
    after = search.search_refined(fused=fused, probs=probs, model=model, top=24, feedback=feedback)
    ids_before = [h.garment_id for h in before.result.hits]
    ids_after = [h.garment_id for h in after.result.hits]
    assert red_top.pk in ids_before and red_top.pk not in ids_after  # 23 of 24: all but it
    assert len(ids_after) == 23
    # The liked navy shoe and its like rise.
    assert ids_after.index(navy_shoe.pk) < ids_before.index(navy_shoe.pk)
    assert after.feedback.dislike_ids == (red_top.pk,)


@pytest.mark.parametrize(
    "like, dislike, field, message",
    [
        ([999_999_999], [], "like", "no garment 999999999"),
        ([], [2**62], "dislike", "no garment"),
        (list(range(1, 502)), [], "like", "at most 50 garment ids, not 501"),
        ("both", "both", "dislike", "both liked and disliked"),
    ],
)
def test_unusable_feedback_is_refused_with_a_clear_message(catalogue, like, dislike, field,
                                                           message):  # fmt: skip
    model, garments, _ = catalogue
    if like == "both":
        like = dislike = [garments[0].pk]
    with pytest.raises(refine.FeedbackError) as caught:
        refine.load_feedback(model=model, like=like, dislike=dislike)
    assert caught.value.field == field and message in str(caught.value)


def test_hidden_or_unindexed_garments_cannot_be_liked_by_shoppers(catalogue):
    model, garments, _ = catalogue
    hidden = garments[0]
    Category.objects.filter(pk=hidden.category_id).update(active=False)
    with pytest.raises(refine.FeedbackError, match="hidden"):
        refine.load_feedback(model=model, like=[hidden.pk])
    assert refine.load_feedback(model=model, like=[hidden.pk], include_hidden=True)
    pending = cast(Garment, GarmentFactory(status=Garment.Status.PENDING))
    with pytest.raises(refine.FeedbackError):
        refine.load_feedback(model=model, dislike=[pending.pk], include_hidden=True)


def test_likes_count_in_the_category_rerank():
    feedback = refine.Feedback(like_ids=(1,), liked_categories=("Shoes",))
    probs = np.array([0.1, 0.2, 0.7], np.float32)
    mixed = refine.probs_with_likes(probs, classes=["Dresses", "Shoes", "Tops"], feedback=feedback)
    assert int(np.argmax(mixed)) == 1 and mixed.sum() == pytest.approx(1.0)
    assert (
        refine.probs_with_likes(probs, classes=["a", "b", "c"], feedback=refine.Feedback()) is probs
    )


# --------------------------------------------------------------------------- understood


def test_predicted_categories_most_likely_first_and_only_visible(catalogue):
    model, _, _ = catalogue
    probs = np.array([0.2, 0.1, 0.7], np.float32)  # Dresses, Shoes, Tops
    found = search.predicted_categories(model=model, probs=probs)
    assert [(p.category.name, round(p.confidence, 2)) for p in found] == [
        ("Tops", 0.7),
        ("Dresses", 0.2),
        ("Shoes", 0.1),
    ]
    Category.objects.filter(name="Dresses").update(active=False)
    assert [p.category.name for p in search.predicted_categories(model=model, probs=probs)] == [
        "Tops",
        "Shoes",
    ]
    assert search.predicted_categories(model=model, probs=np.ones(5, np.float32)) == []
