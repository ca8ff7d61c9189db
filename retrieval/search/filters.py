"""Shopper filters: gender, colour, season, usage and category, the same for every search.

One :class:`SearchFilters` narrows a search by photo (applied inside the clustered scan, so the
top N stays complete: :func:`retrieval.search.table.shopper_filters`), a keyword search and a
category page (:meth:`SearchFilters.q` on a queryset). The web form and the API take the same
parameter names (:data:`FILTER_FIELDS` plus ``category``) and read them through
:func:`resolve_filters`, which matches values case-insensitively to the catalogue's own
spelling and refuses values the catalogue does not have (:class:`UnknownFilterValue`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from django.core.cache import cache
from django.db.models import Q

#: The attribute filters: Garment columns, API parameters and form fields of the same names.
FILTER_FIELDS: tuple[str, ...] = ("gender", "colour", "season", "usage")
#: Longest value a filter may take (the longest column, colour, holds 50 characters).
MAX_VALUE_LENGTH = 50
# Known values per field are cached this long; a value missing from the cache is looked up
# afresh before it is refused, so a colour imported a second ago is accepted at once.
KNOWN_VALUES_SECONDS = 60


@dataclass(frozen=True)
class SearchFilters:
    """What a shopper narrowed the garments to: each set field keeps one exact value.

    Values are the catalogue's spelling (``"Navy Blue"``, ``"Women"``); empty = any.
    ``category_id``: one category's garments only.
    """

    gender: str = ""
    colour: str = ""
    season: str = ""
    usage: str = ""
    category_id: int | None = None

    def __bool__(self) -> bool:
        return any(getattr(self, f.name) not in ("", None) for f in fields(self))

    def active(self) -> dict[str, str | int]:
        """The set filters by name (``category`` for the category id)."""
        chosen: dict[str, str | int] = {
            name: getattr(self, name) for name in FILTER_FIELDS if getattr(self, name)
        }
        if self.category_id is not None:
            chosen["category"] = self.category_id
        return chosen

    def without(self, name: str) -> SearchFilters:
        """These filters less one (``"category"`` or a :data:`FILTER_FIELDS` name): what a
        facet's counts are taken over, so its other values show what choosing them gives."""
        if name == "category":
            return replace(self, category_id=None)
        if name not in FILTER_FIELDS:
            raise ValueError(f"not a filter: {name}")
        values = {field: "" if field == name else getattr(self, field) for field in FILTER_FIELDS}
        return SearchFilters(
            gender=values["gender"],
            colour=values["colour"],
            season=values["season"],
            usage=values["usage"],
            category_id=self.category_id,
        )

    def sql(self, *, garment: str = "g") -> tuple[str, dict]:
        """SQL conditions on the garment table aliased ``garment`` (each starting with
        `` AND ``) and their named parameters (``filter_<name>``)."""
        conditions, params = "", {}
        for name, value in self.active().items():
            column = "category_id" if name == "category" else name
            conditions += f" AND {garment}.{column} = %(filter_{name})s"
            params[f"filter_{name}"] = value
        return conditions, params

    def q(self, *, prefix: str = "") -> Q:
        """The same conditions for a Garment queryset (``prefix``: a relation path to
        Garment, e.g. ``"garment__"``)."""
        condition = Q()
        for name, value in self.active().items():
            column = "category_id" if name == "category" else name
            condition &= Q(**{f"{prefix}{column}": value})
        return condition


class UnknownFilterValue(ValueError):
    """A filter value the catalogue does not have (a misspelt colour, a made-up gender)."""

    def __init__(self, *, name: str, value: str, known: list[str]):
        self.name, self.value, self.known = name, value, known
        listed = ", ".join(known[:60]) + (", ..." if len(known) > 60 else "")
        choices = f"choose one of {listed}" if known else "no garment has one yet"
        super().__init__(f"no garment has {name} {value!r}: {choices}")


def known_values_key(name: str) -> str:
    """The cache key of :func:`known_values` for one filter column."""
    return f"retrieval:filter-values:{name}"


def known_values(name: str, *, fresh: bool = False) -> list[str]:
    """The distinct non-empty values of one filter column over the catalogue, sorted."""
    from retrieval.models import Garment

    if name not in FILTER_FIELDS:
        raise ValueError(f"not a filter: {name}")
    key = known_values_key(name)
    values = None if fresh else cache.get(key)
    if values is None:
        values = sorted(
            Garment.objects.exclude(**{name: ""}).order_by().values_list(name, flat=True).distinct()
        )
        cache.set(key, values, KNOWN_VALUES_SECONDS)
    return values


def canonical_value(name: str, value: str) -> str:
    """The catalogue's spelling of ``value`` for filter ``name`` (case and surrounding blanks
    ignored); raises :class:`UnknownFilterValue`."""
    wanted = " ".join(value.split()).casefold()
    for fresh in (False, True):
        for known in known_values(name, fresh=fresh):
            if known.casefold() == wanted:
                return known
    raise UnknownFilterValue(name=name, value=value, known=known_values(name))


def resolve_filters(
    *,
    gender: str = "",
    colour: str = "",
    season: str = "",
    usage: str = "",
    category_id: int | None = None,
) -> SearchFilters:
    """SearchFilters from a shopper's values, each matched to the catalogue's spelling.

    Raises :class:`UnknownFilterValue` for a value no garment has (and one longer than any
    column holds); blank values mean "any".
    """
    given = {"gender": gender, "colour": colour, "season": season, "usage": usage}
    chosen = {}
    for name, value in given.items():
        value = (value or "").strip()
        if not value:
            continue
        if len(value) > MAX_VALUE_LENGTH or "\x00" in value:
            raise UnknownFilterValue(name=name, value=value[:60], known=known_values(name))
        chosen[name] = canonical_value(name, value)
    return SearchFilters(**chosen, category_id=category_id)


def forget_cached_values() -> None:
    """Drop the cached filter values and keyword vocabulary (each otherwise lives its TTL): the
    next read sees the catalogue as it is now."""
    from retrieval.search.keyword import VOCABULARY_KEY

    cache.delete_many([VOCABULARY_KEY, *(known_values_key(name) for name in FILTER_FIELDS)])
