"""Refining a photo search: words typed beside the photo, and "more / not like this" feedback.

Both act on the query's fused vector ``[deep 512, weight x colour 30]`` (the paper's fused
feature), before the ordinary search ranks the catalogue with it:

- **Colour words** ("this, but in red"): a colour name of the catalogue (its ``colour``
  values: Black, Navy Blue, Red...) replaces the colour part of the vector with that colour's
  colour feature, keeping the photo's deep part (shape, pattern, style). The colour feature
  is made the way a garment's is, from a typical raw RGB at the 10 salient positions: the
  per-position median of the stored raw RGB (``BackboneFeature.rgb``) of the catalogue's
  garments of that colour, encoded with the active model's colour variant and weight. No
  hand-written colour table: "Navy Blue" means what the catalogue's navy garments look like.
- **Category words** ("dress", "t-shirts") restrict the search to that category; other words
  lift the garments whose title contains them to the top of the page (a boost, not a filter:
  an unmatched word never empties the results).
- **Feedback** (Rocchio, in the fused space): ``q' = (q + b mean(liked) - c mean(disliked)) /
  (1 + b - c)``, b = LIKE_WEIGHT, c = DISLIKE_WEIGHT, from the liked and disliked garments'
  stored vectors under the active model; disliked garments are excluded from the results.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar, cast

import numpy as np
from django.db.models import Q

from retrieval.models import BackboneFeature, Category, FeatureModel, Garment, GarmentFeature
from retrieval.spec import COLOUR_DIM, NUM_POSITIONS

if TYPE_CHECKING:
    from retrieval.search.ranking import Hit

#: Longest ``q`` accepted (characters): a few words, not a document.
MAX_QUERY_CHARS = 200
#: Most garment ids in ``like`` or in ``dislike``.
MAX_FEEDBACK_IDS = 50
#: Rocchio weights of the liked and disliked garments' mean (the query's own weight is 1).
#: bench/bench_refine.py (docs/benchmarks.md, "Refining"): p@10 after one round rises with
#: the weights (0.5/0.15 < 0.75/0.25, the classic SMART values < 1.0/0.5 < 1.5/0.75, by
#: ~0.6-1.6 points a step); 1.0/0.5 keeps the shopper's own photo weighing as much as the
#: liked garments' mean (at 1.5 one liked garment would outweigh the photo).
LIKE_WEIGHT = 1.0
DISLIKE_WEIGHT = 0.5
#: A colour needs this many garments in the catalogue to have a typical colour.
MIN_COLOUR_GARMENTS = 3
#: Garments read to compute a colour's typical RGB (the median of a sample is as typical).
COLOUR_SAMPLE = 2000
#: How long a colour's typical feature and the catalogue's colour names are reused (seconds):
#: they change only with the catalogue, and a query must not read thousands of rows each time.
CACHE_SECONDS = 300.0
#: Words typed beside a photo that carry no meaning for the search ("this, but in red").
STOP_WORDS = frozenset(
    {
        *("a", "an", "and", "but", "colour", "color", "in", "it", "its", "like", "of"),
        *("on", "one", "or", "please", "same", "similar", "the", "this", "with", "without"),
    }
)

_WORD = re.compile(r"[^\W_]+(?:[-'][^\W_]+)*")


class FeedbackError(ValueError):
    """``like``/``dislike`` name garments that cannot be used; ``str()`` is fit to show."""

    def __init__(self, message: str, *, field: str) -> None:
        self.field = field
        super().__init__(message)


@dataclass(frozen=True)
class QueryWords:
    """What the words typed beside a photo were understood as.

    colour: the catalogue colour name asked for (its own spelling), or None.
    category: the category the words name (a filter), or None.
    words: the other meaningful words (boost garments whose title holds them).
    """

    text: str = ""
    colour: str | None = None
    category: Category | None = None
    words: tuple[str, ...] = ()


@dataclass
class Feedback:
    """The liked and disliked garments' fused vectors under the active model.

    liked, disliked: ``(L, 542)`` and ``(D, 542)`` float32; ids in the order given.
    """

    like_ids: tuple[int, ...] = ()
    dislike_ids: tuple[int, ...] = ()
    #: The liked garments' category names, in ``like_ids`` order.
    liked_categories: tuple[str, ...] = ()
    liked: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    disliked: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))

    def __bool__(self) -> bool:
        return bool(self.like_ids or self.dislike_ids)


# --------------------------------------------------------------------------- words


def _key(text: str) -> str:
    """Letters and digits only, lower case: "T-Shirts" -> "tshirts"."""
    return "".join(ch for ch in text.lower() if ch.isalnum())


def _singular_keys(name: str) -> set[str]:
    """Keys a category name answers to: "Dresses" -> {"dresses", "dresse", "dress"}."""
    key = _key(name)
    keys = {key}
    if key.endswith("es"):
        keys.add(key[:-2])
    if key.endswith("s"):
        keys.add(key[:-1])
    return {k for k in keys if len(k) >= 3}


_CACHE: dict[tuple[object, ...], tuple[float, Any]] = {}
_CACHE_LOCK = threading.Lock()
T = TypeVar("T")
K = TypeVar("K")


def _cached(key: tuple[object, ...], compute: Callable[[], T]) -> T:
    now = time.monotonic()
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
        if hit is not None and now - hit[0] < CACHE_SECONDS:
            return cast(T, hit[1])
    value = compute()
    with _CACHE_LOCK:
        _CACHE[key] = (now, value)
    return value


def clear_cache() -> None:
    """Forget cached colour names and colour features (after a catalogue change, in tests)."""
    with _CACHE_LOCK:
        _CACHE.clear()


def catalogue_colours() -> list[str]:
    """Colour names shoppers can ask for: the colours of at least MIN_COLOUR_GARMENTS visible
    garments, most common spelling of each name (cached CACHE_SECONDS)."""

    def compute() -> list[str]:
        from django.db.models import Count

        rows = (
            Garment.objects.filter(status=Garment.Status.READY, category__active=True)
            .exclude(colour="")
            .values("colour")
            .annotate(n=Count("id"))
        )
        counts: dict[str, tuple[int, str]] = {}
        for row in rows:
            name, n = row["colour"].strip(), row["n"]
            key = name.lower()
            total, best = counts.get(key, (0, name))
            counts[key] = (total + n, best if total >= n else name)
        return sorted(best for total, best in counts.values() if total >= MIN_COLOUR_GARMENTS)

    return _cached(("colours",), compute)


def parse_query(text: str, *, categories: Iterable[Category]) -> QueryWords:
    """Understand the words typed beside a photo.

    text: the shopper's words (at most MAX_QUERY_CHARS; longer is the caller's 400).
    categories: the categories the caller may search (a queryset or list).

    The longest colour name found wins ("navy blue" over "blue"); a category is named by its
    name, singular or plural, with or without punctuation ("t-shirt" -> Tshirts).
    """
    text = " ".join(str(text).split())
    tokens = [t.lower() for t in _WORD.findall(text)]
    used = [False] * len(tokens)

    def find(names: Mapping[str, K], longest: int) -> K | None:
        for n in range(min(longest, len(tokens)), 0, -1):
            for i in range(len(tokens) - n + 1):
                if any(used[i : i + n]):
                    continue
                found = names.get(_key("".join(tokens[i : i + n])))
                if found is not None:
                    used[i : i + n] = [True] * n
                    return found
        return None

    colour = find({_key(name): name for name in catalogue_colours()}, 3)
    by_key: dict[str, Category] = {}
    for each in categories:
        for key in _singular_keys(each.name):
            by_key.setdefault(key, each)
    category = find(by_key, 3)
    words = tuple(
        dict.fromkeys(t for t, u in zip(tokens, used, strict=True) if not u and t not in STOP_WORDS)
    )[:10]
    return QueryWords(
        text=text,
        colour=colour,
        category=category,
        words=words,
    )


# --------------------------------------------------------------------------- colour


def typical_rgb(*, backbone: str, colour: str) -> np.ndarray | None:
    """The typical raw RGB of a catalogue colour at the 10 salient positions.

    Returns ``(10, 3)`` float32 RGB 0..255: per position and channel, the median over up to
    COLOUR_SAMPLE visible garments of that colour (their ``BackboneFeature.rgb`` under
    ``backbone``); None when fewer than MIN_COLOUR_GARMENTS have one.
    """
    rows = list(
        BackboneFeature.objects.filter(
            backbone=backbone,
            garment__colour__iexact=colour,
            garment__status=Garment.Status.READY,
            garment__category__active=True,
        )
        .order_by("garment_id")
        .values_list("rgb", flat=True)[:COLOUR_SAMPLE]
    )
    if len(rows) < MIN_COLOUR_GARMENTS:
        return None
    raw = np.asarray(rows, dtype=np.float64).reshape(len(rows), NUM_POSITIONS, 3)
    return np.median(raw, axis=0).astype(np.float32)


def colour_part(*, model: FeatureModel, colour: str) -> np.ndarray | None:
    """The fused vector's colour part for a catalogue colour under a model.

    Returns ``(30,)`` float32 = model.colour_weight x colour feature (the model's variant) of
    :func:`typical_rgb`; None when the colour has too few garments. Cached CACHE_SECONDS.
    """
    from retrieval.features.colour import colour_feature

    def compute() -> np.ndarray | None:
        rgb = typical_rgb(backbone=model.backbone, colour=colour)
        if rgb is None:
            return None
        feature = colour_feature(rgb[None], variant=model.colour_variant)[0]
        return (np.float32(model.colour_weight) * feature).astype(np.float32)

    return _cached(("colour", model.pk, model.backbone, colour.lower()), compute)


def with_colour(fused: np.ndarray, part: np.ndarray) -> np.ndarray:
    """The query vector with its colour part replaced. fused ``(542,)``, part ``(30,)``."""
    out = np.array(fused, dtype=np.float32, copy=True)
    out[-COLOUR_DIM:] = part
    return out


# --------------------------------------------------------------------------- feedback


def load_feedback(
    *,
    model: FeatureModel,
    like: tuple[int, ...] | list[int] = (),
    dislike: tuple[int, ...] | list[int] = (),
    include_hidden: bool = False,
) -> Feedback:
    """The stored fused vectors of the liked and disliked garments under ``model``.

    Raises FeedbackError (its ``field``: "like" or "dislike") for more than MAX_FEEDBACK_IDS
    ids, a garment both liked and disliked, or ids that name no garment the caller may see
    that is indexed under the model (shoppers: ready garments of active categories).
    """
    like_ids = tuple(dict.fromkeys(int(i) for i in like))
    dislike_ids = tuple(dict.fromkeys(int(i) for i in dislike))
    for name, ids in (("like", like_ids), ("dislike", dislike_ids)):
        if len(ids) > MAX_FEEDBACK_IDS:
            raise FeedbackError(
                f"at most {MAX_FEEDBACK_IDS} garment ids, not {len(ids)}", field=name
            )
    both = sorted(set(like_ids) & set(dislike_ids))
    if both:
        raise FeedbackError(
            f"garment {', '.join(map(str, both))} is both liked and disliked", field="dislike"
        )
    wanted = [i for i in (*like_ids, *dislike_ids) if 0 < i < 2**63]
    rows = GarmentFeature.objects.filter(model=model, garment_id__in=wanted)
    if not include_hidden:
        rows = rows.filter(
            Q(garment__status=Garment.Status.READY) & Q(garment__category__active=True)
        )
    vectors, categories = {}, {}
    for gid, vector, category in rows.values_list("garment_id", "fused", "garment__category__name"):
        vectors[gid], categories[gid] = np.asarray(vector, np.float32), category
    for name, ids in (("like", like_ids), ("dislike", dislike_ids)):
        missing = [i for i in ids if i not in vectors]
        if missing:
            shown = ", ".join(map(str, missing[:5])) + (" ..." if len(missing) > 5 else "")
            raise FeedbackError(
                f"no garment {shown} in the searchable catalogue (unknown, hidden or not "
                "indexed yet)",
                field=name,
            )

    def stack(ids: tuple[int, ...]) -> np.ndarray:
        if not ids:
            return np.zeros((0, 0), np.float32)
        return np.vstack([vectors[i] for i in ids]).astype(np.float32)

    return Feedback(
        like_ids=like_ids,
        dislike_ids=dislike_ids,
        liked_categories=tuple(categories[i] for i in like_ids),
        liked=stack(like_ids),
        disliked=stack(dislike_ids),
    )


def rocchio(
    fused: np.ndarray,
    feedback: Feedback,
    *,
    like_weight: float = LIKE_WEIGHT,
    dislike_weight: float = DISLIKE_WEIGHT,
) -> np.ndarray:
    """Rocchio's query update in the fused space.

    fused: ``(542,)`` the query's vector. Returns ``(542,)`` float32:
    ``(q + b mean(liked) - c mean(disliked)) / (1 + b - c)`` with the terms of an empty side
    left out. The division keeps the coefficients summing to 1, so the vector stays at the
    scale of the catalogue's (unit-length deep part, weighted colour part) and the colour
    weight keeps its meaning.
    """
    q = np.asarray(fused, dtype=np.float64)
    total, scale = q.copy(), 1.0
    if len(feedback.liked):
        total += like_weight * feedback.liked.astype(np.float64).mean(axis=0)
        scale += like_weight
    if len(feedback.disliked):
        total -= dislike_weight * feedback.disliked.astype(np.float64).mean(axis=0)
        scale -= dislike_weight
    return (total / scale).astype(np.float32)


def probs_with_likes(
    probs: np.ndarray, *, classes: Sequence[object], feedback: Feedback
) -> np.ndarray:
    """The category probabilities the re-rank orders by, told by the liked garments too.

    probs: ``(C,)`` the head's softmax for the photo, in ``classes`` order. Returns ``(C,)``:
    the mean of the photo's probabilities and the liked garments' category histogram (the
    shopper's choice weighs as much as the head's guess), or ``probs`` without likes.
    """
    if not feedback.liked_categories or len(probs) != len(classes):
        return probs
    index = {str(name): i for i, name in enumerate(classes)}
    liked = np.zeros(len(classes), np.float64)
    for name in feedback.liked_categories:
        if name in index:
            liked[index[name]] += 1.0
    if not liked.any():
        return probs
    mixed = 0.5 * np.asarray(probs, np.float64) + 0.5 * liked / liked.sum()
    return mixed.astype(np.float32)


def title_holds(title: str, words: tuple[str, ...]) -> bool:
    """Whether a title holds every word (as the start of one of its words, ignoring case and
    punctuation: "tee" matches "T-shirt"? no; "shirt" matches "Shirts", "t-shirt" "Tshirt")."""
    keys = {_key(w) for w in _WORD.findall(title)}
    return all(any(k.startswith(_key(w)) for k in keys) for w in words if _key(w))


def lift(
    hits: list[Hit], *, top: int, tests: Sequence[Callable[[Hit], bool]]
) -> tuple[list[Hit], list[int]]:
    """Order ``hits`` (:class:`retrieval.search.Hit`, nearest first) by ``tests`` (predicates
    on a hit), the first test first: hits passing it come before those failing it, ties
    broken by the next test, then by distance (the sort is stable). Keep ``top``.

    Returns (hits, for each test how many of the kept hits pass it).
    """
    if not tests:
        return hits[:top], []
    passed = {id(h): tuple(not test(h) for test in tests) for h in hits}
    ordered = sorted(hits, key=lambda h: passed[id(h)])[:top]
    return ordered, [sum(not passed[id(h)][i] for h in ordered) for i in range(len(tests))]
