"""Facet counts: how many garments each filter value would leave ("Women (1,204) · Men (980)").

Counts are disjunctive, as shops show them: a facet's values are counted with every *other*
chosen filter applied but not its own, so with ``colour=Red`` chosen the colour facet still
says how many Blue garments choosing Blue instead would give, and the gender facet counts the
red garments per gender. One SQL statement for every facet (GROUPING SETS, one filtered count
per facet), over the garments the caller's queryset selects (visibility, keyword match).
"""

from __future__ import annotations

from dataclasses import dataclass

from django.db import connection
from django.db.models import QuerySet

from retrieval.models import Category
from retrieval.search.filters import FILTER_FIELDS, SearchFilters

#: The facets, in the order a page shows them.
FACETS: tuple[str, ...] = (*FILTER_FIELDS, "category")
_COLUMNS = {**{name: name for name in FILTER_FIELDS}, "category": "category_id"}


@dataclass(frozen=True)
class FacetValue:
    """One value of a facet: ``value`` is what the filter parameter takes (a category's
    slug), ``label`` what a person reads, ``count`` the garments choosing it gives."""

    value: str
    label: str
    count: int
    selected: bool = False


@dataclass(frozen=True)
class Facet:
    name: str
    values: tuple[FacetValue, ...]


def facet_counts(
    *, queryset: QuerySet, filters: SearchFilters, names: tuple[str, ...] = FACETS
) -> list[Facet]:
    """The facets ``names`` over ``queryset`` (garments, without ``filters`` applied), each
    value's count taken with the other facets' chosen filters; most garments first, values
    with none left out unless chosen."""
    names = tuple(name for name in FACETS if name in names)
    if not names:
        return []
    base_sql, base_params = queryset.order_by().values("id").query.sql_with_params()
    columns = [f"g.{_COLUMNS[name]}" for name in names]
    counts, count_params = [], []
    for name in names:
        others = filters.without(name).active()
        conditions = "".join(f" AND g.{_COLUMNS[other]} = %s" for other in others)
        count_params += list(others.values())
        counts.append(f"count(*) FILTER (WHERE true{conditions})")
    sql = (
        f"SELECT {', '.join(f'GROUPING({c})' for c in columns)}, {', '.join(columns)}, "
        f"{', '.join(counts)} FROM retrieval_garment AS g WHERE g.id IN ({base_sql}) "
        f"GROUP BY GROUPING SETS ({', '.join(f'({c})' for c in columns)})"
    )
    params = [*count_params, *base_params]  # in order of appearance
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    k = len(names)
    found: dict[str, dict] = {name: {} for name in names}
    for row in rows:
        grouping, values, numbers = row[:k], row[k : 2 * k], row[2 * k :]
        i = list(grouping).index(0)  # the one column this grouping set groups by
        if values[i] not in (None, "") and numbers[i]:
            found[names[i]][values[i]] = numbers[i]
    return [_facet(name, found[name], filters) for name in names]


def _facet(name: str, counts: dict, filters: SearchFilters) -> Facet:
    chosen = filters.active().get(name)
    if chosen is not None and chosen not in counts:
        counts[chosen] = 0
    if name == "category":
        categories = Category.objects.in_bulk(list(counts))
        items = [
            FacetValue(
                value=categories[pk].slug,
                label=categories[pk].name,
                count=n,
                selected=pk == chosen,
            )
            for pk, n in counts.items()
            if pk in categories
        ]
    else:
        items = [
            FacetValue(value=v, label=v, count=n, selected=v == chosen) for v, n in counts.items()
        ]
    items.sort(key=lambda item: (-item.count, item.label))
    return Facet(name=name, values=tuple(items))
