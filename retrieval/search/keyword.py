"""Keyword search: the words a shopper typed -> garments, best match first.

PostgreSQL full-text search over each garment's document (``Garment.search_vector``, kept by a
trigger: title and category name weigh most, then colour and the catalogue's type columns,
then gender, season, usage and year; English stemming, so "shirts" finds "Shirt"). Every word
must match, each as a prefix ("jack" finds "Jackets"); ranked by ``ts_rank``, newest first
among equals.

Typo tolerance: when the words match nothing, each word the catalogue does not know is
replaced by the nearest word it does know ("jeens" -> "jeans"), and the corrected words are
searched and reported (:attr:`KeywordMatches.corrected`). The embedded PostgreSQL has no
``pg_trgm``, so the similarity is computed here over the catalogue's vocabulary (a few
thousand words, cached); measured against the plain search in docs/benchmarks.md.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from django.contrib.postgres.search import SearchQuery, SearchRank
from django.core.cache import cache
from django.db import connection
from django.db.models import F, QuerySet

#: Longest query read, in characters (longer ones are refused with a message).
MAX_QUERY_CHARS = 200
#: Words of a query searched (the rest are ignored: every word must match, so more than a
#: handful only narrows to nothing).
MAX_TERMS = 8
#: Longest word kept (no catalogue word is longer; longer ones are noise).
MAX_TERM_CHARS = 40
#: How similar (difflib ratio, 0..1) a catalogue word must be to replace a misspelt one.
CORRECTION_CUTOFF = 0.75
VOCABULARY_SECONDS = 600
_WORD = re.compile(r"[^\W_]+")  # letters and digits: nothing to_tsquery could read as syntax

# Every word of the visible catalogue's documents, unstemmed ('simple' configuration), with
# the number of garments using it: what a misspelt word is corrected to.
VOCABULARY_SQL = """
SELECT word, ndoc FROM ts_stat($$
    SELECT to_tsvector('simple', concat_ws(' ', g.title, c.name, g.colour, g.gender, g.season,
                                           g.usage))
    FROM retrieval_garment AS g JOIN retrieval_category AS c ON c.id = g.category_id
    WHERE g.status = 'ready' AND c.active
$$)
"""


class KeywordQueryError(ValueError):
    """The query cannot be searched (too long); the message says why, for a person."""


@dataclass(frozen=True)
class KeywordMatches:
    """A keyword search: ``garments`` (a lazy queryset, best match first, annotated with
    ``rank``), the words searched, and the corrected words when the typed ones found nothing
    (empty tuple otherwise)."""

    garments: QuerySet
    terms: tuple[str, ...]
    corrected: tuple[str, ...] = ()

    @property
    def searched(self) -> tuple[str, ...]:
        return self.corrected or self.terms


def query_terms(q: str) -> tuple[str, ...]:
    """The words of a query: lower case, letters and digits only, at most MAX_TERMS.

    Raises KeywordQueryError for a query over MAX_QUERY_CHARS characters.
    """
    if len(q) > MAX_QUERY_CHARS:
        raise KeywordQueryError(
            f"the search words are {len(q):,} characters long; at most {MAX_QUERY_CHARS} are "
            "read: try a few words"
        )
    words = [w.casefold() for w in _WORD.findall(q)]
    seen: dict[str, None] = {}
    for word in words:
        if len(word) <= MAX_TERM_CHARS:
            seen.setdefault(word, None)
    return tuple(seen)[:MAX_TERMS]


def tsquery(terms: tuple[str, ...]) -> str:
    """A to_tsquery text: every term, as a prefix ("red & shirt:*"). Terms hold letters and
    digits only (:func:`query_terms`), so the text cannot carry tsquery syntax."""
    return " & ".join(f"'{term}':*" for term in terms)


def matching(queryset: QuerySet, terms: tuple[str, ...]) -> QuerySet:
    """The garments of ``queryset`` whose document holds every term, best first."""
    if not terms:
        return queryset.none()
    query = SearchQuery(tsquery(terms), search_type="raw", config="english")
    return (
        queryset.filter(search_vector=query)
        .annotate(rank=SearchRank(F("search_vector"), query))
        .order_by("-rank", "-created_at", "-id")
    )


VOCABULARY_KEY = "retrieval:keyword-vocabulary"


def vocabulary() -> dict[str, int]:
    """Every word of the visible catalogue (lower case) -> how many garments use it; cached."""
    key = VOCABULARY_KEY
    words = cache.get(key)
    if words is None:
        with connection.cursor() as cursor:
            cursor.execute(VOCABULARY_SQL)
            words = {word: ndoc for word, ndoc in cursor.fetchall() if not word.isdigit()}
        cache.set(key, words, VOCABULARY_SECONDS)
    return words


def correct_terms(terms: tuple[str, ...]) -> tuple[str, ...]:
    """Each term the vocabulary does not know (not even as a prefix), replaced by its most
    similar known word (the most used one among equally similar); unchanged when none is
    similar enough. Returns ``terms`` itself when nothing changed."""
    words = vocabulary()
    corrected = []
    for term in terms:
        if term in words or len(term) < 3 or any(w.startswith(term) for w in words):
            corrected.append(term)
            continue
        close = difflib.get_close_matches(term, words, n=5, cutoff=CORRECTION_CUTOFF)
        if not close:
            corrected.append(term)
            continue
        ratio = {w: difflib.SequenceMatcher(None, term, w).ratio() for w in close}
        corrected.append(max(close, key=lambda w: (round(ratio[w], 2), words[w])))
    result = tuple(corrected)
    return terms if result == terms else result


def keyword_search(*, queryset: QuerySet, q: str) -> KeywordMatches:
    """The garments of ``queryset`` (what the caller may see, already filtered) matching the
    words of ``q``, best first; misspelt words corrected when the typed ones match nothing.

    Raises KeywordQueryError for a query that is too long.
    """
    terms = query_terms(q)
    found = matching(queryset, terms)
    if not terms or found.exists():
        return KeywordMatches(garments=found, terms=terms)
    corrected = correct_terms(terms)
    if corrected == terms:
        return KeywordMatches(garments=found, terms=terms)
    return KeywordMatches(garments=matching(queryset, corrected), terms=terms, corrected=corrected)
