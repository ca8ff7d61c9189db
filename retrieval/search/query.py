"""Search by photo or by a garment: image (or stored vector) -> ranked garments; the one entry
point for the shop, the API and evaluation.

:func:`search_image` is the plain photo search (evaluation, benchmarks); :func:`search_photo`
is what shoppers get: the same search plus the words typed beside the photo, "more / not like
this" feedback (:mod:`retrieval.search.refine`) and the categories the model recognised.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
from django.conf import settings
from PIL import Image

from retrieval.models import Category, FeatureModel, Garment, GarmentFeature
from retrieval.search import refine
from retrieval.search.filters import SearchFilters
from retrieval.search.ranking import (
    Hit,
    SearchResult,
    SearchUnavailable,
    require_active_model,
    search_vectors,
)

#: A search photo: decoded (RGB) or its encoded bytes.
PhotoSource = Image.Image | bytes | bytearray

#: How many recognised categories a photo search reports (the first and the next likely).
PREDICTED_CATEGORIES = 3
#: Candidates ranked before the words lift some of them (a colour's garments, titles holding
#: the words): enough for the page to fill with garments that match when a few are farther.
BOOST_CANDIDATES = 100


@dataclass(frozen=True)
class PredictedCategory:
    """A category the head recognised in the photo, with its softmax probability (0..1)."""

    category: Category
    confidence: float


@dataclass
class PhotoSearch:
    """A shopper's photo search: the ranked result and what the search understood.

    understood: the words (colour, category, other words); colour_applied: the colour part
    of the query vector was replaced (False when the words named no colour, or the colour
    has too few garments to have a typical one); colour_matches: results whose catalogue colour
    is the asked one (they come first); boosted: results whose title holds the other words
    (first among those); predicted: the recognised categories, most likely first.
    """

    result: SearchResult
    understood: refine.QueryWords = field(default_factory=refine.QueryWords)
    feedback: refine.Feedback = field(default_factory=refine.Feedback)
    predicted: list[PredictedCategory] = field(default_factory=list)
    colour_applied: bool = False
    colour_matches: int = 0
    boosted: int = 0


def _photo_vectors(image: PhotoSource, model: FeatureModel) -> tuple[np.ndarray, np.ndarray]:
    """The photo's fused vector ``(542,)`` and category probabilities ``(C,)`` (one CNN pass,
    on the centre crop where RETRIEVAL_QUERY_CROP=centre finds the border is not plain; one
    more with RETRIEVAL_QUERY_CROP=map or RETRIEVAL_QUERY_FLIP). image: a PIL image or bytes."""
    from retrieval import images
    from retrieval.features import extractor_for

    if isinstance(image, bytes | bytearray):
        image = images.open_image(
            bytes(image), max_pixels=settings.RETRIEVAL_MAX_PIXELS, max_side=images.DECODE_MAX_SIDE
        )
    out = extractor_for(backbone=model.backbone, model=model).extract_query(
        [image], flip=settings.RETRIEVAL_QUERY_FLIP, crop=settings.RETRIEVAL_QUERY_CROP
    )
    return out["fused"][0], out["probs"][0]


def _rank(
    *,
    fused: np.ndarray,
    probs: np.ndarray,
    model: FeatureModel,
    top: int,
    mode: str,
    category_id: int | None,
    probes: int | None,
    include_hidden: bool,
    exclude_garment_ids: tuple[int, ...] = (),
    filters: SearchFilters | None = None,
) -> SearchResult:
    """Rank the catalogue for a photo's vector: the predicted category first with
    RETRIEVAL_RERANK=category (fused and exact searches without a category), else plain.
    filters (``category_id`` is the same as ``filters.category_id``) apply inside the
    clustered search."""
    if category_id is not None:
        filters = replace(filters or SearchFilters(), category_id=category_id)
    chosen_category = filters is not None and filters.category_id is not None
    if settings.RETRIEVAL_RERANK == "category" and mode != "deep" and not chosen_category:
        from retrieval.search import rerank

        return rerank.search_reranked(
            fused=fused,
            probs=probs,
            model=model,
            top=top,
            probes=probes,
            clustered=mode == "fused",
            min_confidence=settings.RETRIEVAL_RERANK_MIN_CONFIDENCE,
            exclude_garment_ids=exclude_garment_ids,
            include_hidden=include_hidden,
            filters=filters,
        )
    return search_vectors(
        fused=fused,
        model=model,
        top=top,
        mode=mode,
        probes=probes,
        exclude_garment_ids=exclude_garment_ids,
        include_hidden=include_hidden,
        filters=filters,
    )


def _reranked_category(
    *, probs: np.ndarray, model: FeatureModel, mode: str, category_id: int | None
) -> str | None:
    """The category :func:`_rank`'s re-rank lists first for these probabilities (None when
    it does not apply: RETRIEVAL_RERANK=none, deep mode, a category filter, low confidence)."""
    if settings.RETRIEVAL_RERANK != "category" or mode == "deep" or category_id is not None:
        return None
    classes = list(model.classes or ())
    if len(probs) != len(classes) or not classes:
        return None
    index = int(np.argmax(probs))
    if float(probs[index]) < settings.RETRIEVAL_RERANK_MIN_CONFIDENCE:
        return None
    return str(classes[index])


def search_image(
    *,
    image: PhotoSource,
    top: int = 10,
    mode: str = "fused",
    category_id: int | None = None,
    probes: int | None = None,
    include_hidden: bool = False,
    filters: SearchFilters | None = None,
) -> SearchResult:
    """Search by photo. image: a PIL image (RGB) or bytes.

    filters: the shopper's gender, colour, season, usage and category, applied inside the
    clustered search (:func:`retrieval.search.search_vectors`); ``category_id`` is the same
    as ``filters.category_id``.

    Runs the CNN once, as the paper does, on the photo or (RETRIEVAL_QUERY_CROP=centre, the
    default, a departure from the paper) on its middle 80% when its border is not plain;
    RETRIEVAL_QUERY_CROP=map and RETRIEVAL_QUERY_FLIP add a pass each
    (:meth:`retrieval.features.FeatureExtractor.extract_query`). With
    RETRIEVAL_RERANK=category, fused and exact searches list the predicted category's garments
    first (:mod:`retrieval.search.rerank`; a departure from the paper).
    """
    started = time.perf_counter()
    model = require_active_model()
    fused, probs = _photo_vectors(image, model)
    result = _rank(
        fused=fused,
        probs=probs,
        model=model,
        top=top,
        mode=mode,
        category_id=category_id,
        probes=probes,
        include_hidden=include_hidden,
        filters=filters,
    )
    _predict(result, model=model, probs=probs)
    result.took_ms = (time.perf_counter() - started) * 1000.0
    return result


def _predict(result: SearchResult, *, model: FeatureModel, probs: np.ndarray) -> None:
    """The head's most probable category of the photo and its probability on ``result``
    (the search analytics record them). probs: ``(C,)``; a head whose classes no longer
    match the model's gives none."""
    if len(probs) and len(probs) == len(model.classes or ()):
        from retrieval.search.rerank import predicted_category

        result.predicted_category, result.confidence = predicted_category(model=model, probs=probs)


def predicted_categories(
    *, model: FeatureModel, probs: np.ndarray, include_hidden: bool = False
) -> list[PredictedCategory]:
    """The PREDICTED_CATEGORIES most probable categories of a photo that the caller may see.

    probs: ``(C,)`` the head's softmax, in ``model.classes`` order (a head whose classes no
    longer match gives none).
    """
    classes = list(model.classes or ())
    if len(probs) != len(classes):
        return []
    order = np.argsort(-np.asarray(probs, dtype=np.float64), kind="stable")
    names = [str(classes[i]) for i in order[: PREDICTED_CATEGORIES * 3]]
    visible = Category.objects.filter(name__in=names)
    if not include_hidden:
        visible = visible.filter(active=True)
    by_name = {c.name: c for c in visible}
    found = [
        PredictedCategory(category=by_name[str(classes[i])], confidence=float(probs[i]))
        for i in order
        if str(classes[i]) in by_name
    ]
    return found[:PREDICTED_CATEGORIES]


def search_photo(
    *,
    image: PhotoSource,
    q: str = "",
    like: tuple[int, ...] | list[int] = (),
    dislike: tuple[int, ...] | list[int] = (),
    top: int = 10,
    mode: str = "fused",
    category_id: int | None = None,
    probes: int | None = None,
    include_hidden: bool = False,
    filters: SearchFilters | None = None,
) -> PhotoSearch:
    """A shopper's search by photo, refined by words and feedback (site and API).

    image: a PIL image (RGB) or bytes. The rest as :func:`search_refined`. Unusable ``q``,
    ``like`` or ``dislike`` are refused before the CNN runs.
    """
    started = time.perf_counter()
    model = require_active_model()
    # Checked before the CNN runs: a bad id or word list costs no inference.
    feedback = refine.load_feedback(
        model=model, like=like, dislike=dislike, include_hidden=include_hidden
    )
    understood = _understand(q, include_hidden=include_hidden)
    fused, probs = _photo_vectors(image, model)
    found = search_refined(
        fused=fused,
        probs=probs,
        model=model,
        understood=understood,
        feedback=feedback,
        top=top,
        mode=mode,
        category_id=category_id,
        probes=probes,
        include_hidden=include_hidden,
        filters=filters,
    )
    found.result.took_ms = (time.perf_counter() - started) * 1000.0
    return found


def _understand(q: str, *, include_hidden: bool) -> refine.QueryWords:
    if len(q) > refine.MAX_QUERY_CHARS:
        raise ValueError(f"q: at most {refine.MAX_QUERY_CHARS} characters, not {len(q)}")
    if not q.strip():
        return refine.QueryWords()
    categories = Category.objects.all() if include_hidden else Category.objects.filter(active=True)
    return refine.parse_query(q, categories=categories)


def search_refined(
    *,
    fused: np.ndarray,
    probs: np.ndarray,
    model: FeatureModel,
    understood: refine.QueryWords | None = None,
    feedback: refine.Feedback | None = None,
    top: int = 10,
    mode: str = "fused",
    category_id: int | None = None,
    probes: int | None = None,
    include_hidden: bool = False,
    exclude_garment_ids: tuple[int, ...] = (),
    like_weight: float = refine.LIKE_WEIGHT,
    dislike_weight: float = refine.DISLIKE_WEIGHT,
    colour_labels: bool = True,
    filters: SearchFilters | None = None,
) -> PhotoSearch:
    """Search with a photo's vectors, refined by what the shopper said (no CNN here: the
    evaluation and the benchmarks call it with stored vectors).

    fused: ``(542,)`` the photo's fused vector; probs: ``(C,)`` its category probabilities.
    understood (:func:`refine.parse_query`): a catalogue colour replaces the colour part of
    the vector (and makes the search "fused": the colour is asked for), and with
    ``colour_labels`` the nearest BOOST_CANDIDATES garments whose catalogue colour is that one
    come first (the vector finds the colour's look, the label confirms it); a category restricts
    the search to it unless ``category_id`` is given; other words lift the garments whose
    title holds them to the top. feedback (:func:`refine.load_feedback`): the vector moves
    towards the liked garments and away from the disliked ones (Rocchio); the liked garments'
    categories count in the category re-rank as much as the photo's; disliked garments never
    come back.
    """
    started = time.perf_counter()
    understood = understood or refine.QueryWords()
    feedback = feedback or refine.Feedback()
    colour_applied = False
    if understood.colour:
        part = refine.colour_part(model=model, colour=understood.colour)
        if part is not None:
            fused, colour_applied, mode = refine.with_colour(fused, part), True, "fused"
    rank_probs = probs
    if feedback:
        fused = refine.rocchio(
            fused, feedback, like_weight=like_weight, dislike_weight=dislike_weight
        )
        rank_probs = refine.probs_with_likes(probs, classes=model.classes or (), feedback=feedback)
    if category_id is None and filters is not None:
        category_id = filters.category_id
    if category_id is None and understood.category is not None:
        category_id = understood.category.pk
    # The words also lift the candidates that match them: the asked colour's garments by
    # their catalogue colour (with colour_labels), then titles holding the other words.
    lift_colour = colour_applied and colour_labels
    result = _rank(
        fused=fused,
        probs=rank_probs,
        model=model,
        top=max(top, BOOST_CANDIDATES) if understood.words or lift_colour else top,
        mode=mode,
        category_id=category_id,
        probes=probes,
        include_hidden=include_hidden,
        exclude_garment_ids=(*exclude_garment_ids, *feedback.dislike_ids),
        filters=filters,
    )
    tests: list[Callable[[Hit], bool]] = []
    colour_matches = boosted = 0
    if lift_colour or understood.words:
        labels = {
            pk: (title, colour.lower(), category)
            for pk, title, colour, category in Garment.objects.filter(
                pk__in=[h.garment_id for h in result.hits]
            ).values_list("pk", "title", "colour", "category__name")
        }
        blank = ("", "", "")
        # The re-rank's category stays first (the words refine within the photo's category).
        first = _reranked_category(
            probs=rank_probs, model=model, mode=mode, category_id=category_id
        )
        if first is not None:
            tests.append(lambda h: labels.get(h.garment_id, blank)[2] == first)
        if lift_colour:
            asked = (understood.colour or "").lower()
            tests.append(lambda h: labels.get(h.garment_id, blank)[1] == asked)
        if understood.words:
            words = understood.words
            tests.append(lambda h: refine.title_holds(labels.get(h.garment_id, blank)[0], words))
        result.hits, counts = refine.lift(result.hits, top=top, tests=tests)
        colour_matches = counts[-2 if understood.words else -1] if lift_colour else 0
        boosted = counts[-1] if understood.words else 0
    _predict(result, model=model, probs=probs)
    result.took_ms = (time.perf_counter() - started) * 1000.0
    return PhotoSearch(
        result=result,
        understood=understood,
        feedback=feedback,
        predicted=predicted_categories(model=model, probs=probs, include_hidden=include_hidden),
        colour_applied=colour_applied,
        colour_matches=colour_matches,
        boosted=boosted,
    )


def more_like_this(
    *,
    garment: Garment,
    top: int = 10,
    mode: str = "fused",
    probes: int | None = None,
    include_hidden: bool = False,
    filters: SearchFilters | None = None,
) -> SearchResult:
    """Garments similar to an indexed one, from its stored vectors (no CNN pass), within the
    shopper's ``filters``."""
    model = require_active_model()
    row = GarmentFeature.objects.filter(garment=garment, model=model).values_list("fused").first()
    if row is None:
        raise SearchUnavailable(f"garment {garment.sku} is not indexed under the active model")
    return search_vectors(
        fused=np.asarray(row[0], dtype=np.float32),
        model=model,
        top=top,
        mode=mode,
        probes=probes,
        exclude_garment_ids=(garment.pk,),
        include_hidden=include_hidden,
        filters=filters,
    )
