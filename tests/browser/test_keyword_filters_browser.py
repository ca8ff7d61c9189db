"""Issue #15 in a real headless Chromium (Debian's chromium, driven by Playwright) against a
live server over the trained catalogue (300 garments of the shared sample), on a desktop and a
phone-sized screen: the header's keyword search (ranked results, the words shown back escaped,
the empty state), and each filter (gender, colour, season, usage, category) with its facet
counts on a keyword search, a category page and the search by photo: the counts are the
database's, choosing a value narrows the results to garments that have it, and the other
counts follow. Screenshots go to test-output/."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.contrib.auth.models import AnonymousUser
from django.db.models import Count, QuerySet

from retrieval import search
from retrieval.models import Category, Garment
from retrieval.selectors import visible_garments
from tests.conftest import OUTPUT

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
]

SCREENS: dict[str, dict[str, Any]] = {
    "desktop": {"viewport": {"width": 1280, "height": 900}},
    "phone": {
        "viewport": {"width": 375, "height": 812},
        "device_scale_factor": 2,
        "is_mobile": True,
        "has_touch": True,
    },
}
# The filters, and the garment column each one reads (a category by its name, as shown).
COLUMNS = {
    "gender": "gender",
    "colour": "colour",
    "season": "season",
    "usage": "usage",
    "category": "category__name",
}
CARDS = "#garment-list > li.card"
# How long a search by photo may take to show its results: the CNN runs in the live server, on
# a CI machine that may be busy (expect()'s own default is 5 s).
SEARCH_WAIT_MS = 60_000
RESULTS = "#result-list > li.card"


@pytest.fixture(params=list(SCREENS))
def screen(request, browser):
    context = browser.new_context(**SCREENS[request.param])
    context.set_default_timeout(60_000)  # a search runs the CNN on a busy CI machine
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.screen = request.param
    yield page
    context.close()
    assert errors == [], f"JavaScript errors: {errors}"


@pytest.fixture
def shown() -> QuerySet[Garment]:
    """What a shopper's lists are drawn from: visible garments (indexed, active category)."""
    return visible_garments(AnonymousUser())


# --------------------------------------------------------------------------- helpers


def expected_facets(
    garments: QuerySet[Garment], chosen: dict[str, str], names: tuple[str, ...]
) -> dict[str, dict[str, int]]:
    """Facet counts straight from the database: for each filter, its values over
    ``garments`` with every *other* chosen filter applied (a chosen value with none stays)."""
    facets = {}
    for name in names:
        narrowed = garments
        for other, value in chosen.items():
            if other != name:
                narrowed = narrowed.filter(**{COLUMNS[other]: value})
        rows = narrowed.values_list(COLUMNS[name]).annotate(n=Count("pk")).order_by()
        counts = {value: n for value, n in rows if value not in (None, "") and n}
        if name in chosen:
            counts.setdefault(chosen[name], 0)
        facets[name] = counts
    return facets


def facets_on_page(page) -> dict[str, dict[str, int]]:
    """The facet chips of a list page: {filter: {value: count}} ("Women (1,204)")."""
    return page.locator(".facets section[data-facet]").evaluate_all(
        """sections => Object.fromEntries(sections.map(section => [
            section.dataset.facet,
            Object.fromEntries(Array.from(section.querySelectorAll("a[data-value]")).map(a =>
                [a.dataset.value, Number(a.querySelector(".count").textContent.replace(/\\D/g, ""))]
            )),
        ]))"""
    )


def menus_on_page(page) -> dict[str, dict[str, int]]:
    """The photo search's filter menus: {filter: {label: count}}, "Any ..." left out."""
    menus = page.locator("#search-form select[data-filter]").evaluate_all(
        """selects => Object.fromEntries(selects.map(select => [
            select.dataset.filter,
            Object.fromEntries(Array.from(select.options).filter(o => o.value).map(o => [
                o.dataset.label,
                Number(o.textContent.match(/\\(([\\d,]+)\\)$/)[1].replace(/,/g, "")),
            ])),
        ]))"""
    )
    # A menu keeps its values after a search narrowed them to none ("Red (0)"), and every
    # category (the recognised-category chips choose among them); the database's facets
    # list only values with garments.
    return {name: {label: n for label, n in menu.items() if n} for name, menu in menus.items()}


def card_ids(page, selector: str = CARDS) -> list[int]:
    return page.locator(selector).evaluate_all(
        "cards => cards.map(card => Number(card.dataset.garmentId))"
    )


def narrowing_value(counts: dict[str, int]) -> str:
    """The value of a facet with the most garments that still leaves some out (a facet with
    one value: that one; the list then stays as it is, as its count says)."""
    total = sum(counts.values())
    choices = [(n, value) for value, n in counts.items() if 0 < n < total]
    if not choices:
        assert len(counts) == 1, counts
        return next(iter(counts))
    return max(choices)[1]


def check_cards_have(page, name: str, value: str, *, selector: str = CARDS) -> list[int]:
    ids = card_ids(page, selector)
    assert ids, f"no result with {name}={value}"
    values = set(Garment.objects.filter(pk__in=ids).values_list(COLUMNS[name], flat=True))
    assert values == {value}, (name, value, values)
    return ids


def check_reachable(page, locator) -> None:
    """On the screen (scrolled to), clickable, and the page does not scroll sideways."""
    locator.scroll_into_view_if_needed()
    box = locator.bounding_box()
    viewport = page.viewport_size
    assert box is not None and box["width"] >= 24 and box["height"] >= 24, box
    assert box["x"] >= 0 and box["x"] + box["width"] <= viewport["width"] + 1, box
    assert page.evaluate("document.documentElement.scrollWidth") <= viewport["width"]


def choose_facets_one_by_one(page, url: str, garments, names: tuple[str, ...]) -> None:
    """On a list page (``url``): the chips count what the database counts; choosing each
    filter's biggest narrowing value lists only garments with it and updates the counts."""
    from playwright.sync_api import expect

    page.goto(url)
    before = facets_on_page(page)
    assert before == expected_facets(garments, {}, names)
    for name in names:
        page.goto(url)
        value = narrowing_value(before[name])
        chip = page.locator(f'.facets section[data-facet="{name}"] a[data-value="{value}"]')
        expect(chip).to_contain_text(f"{value} ({before[name][value]:,})")
        check_reachable(page, chip)
        chip.click()
        expect(
            page.locator(f'section[data-facet="{name}"] a[aria-current="true"]')
        ).to_have_attribute("data-value", value)
        expect(page.locator("#list-count")).to_contain_text(f"{before[name][value]:,} garment")
        check_cards_have(page, name, value)
        assert facets_on_page(page) == expected_facets(garments, {name: value}, names)
        # The chosen chip clears the filter again.
        page.locator(f'section[data-facet="{name}"] a[aria-current="true"]').click()
        expect(page.locator(f'section[data-facet="{name}"] a[aria-current="true"]')).to_have_count(
            0
        )
        assert facets_on_page(page) == before


# --------------------------------------------------------------------------- keyword search


def test_keyword_search_from_the_header(site, screen, shown):
    """Words typed in the header's search box (from another page): the matches, ranked like
    the keyword search ranks them, the words shown back as text, not markup."""
    from playwright.sync_api import expect

    screen.goto(site + "/categories/")
    box = screen.locator("#site-q")
    check_reachable(screen, box)
    words = "<b>black</b> men"
    box.fill(words)
    box.press("Enter")
    expect(screen.locator("#keyword-heading")).to_contain_text("Results for")
    expect(screen.locator("#searched-words")).to_have_text(words)
    assert screen.locator("#keyword-heading b").count() == 0  # shown as text, escaped
    expect(screen.locator("#site-q")).to_have_value(words)  # kept in the box to refine
    matches = search.keyword.keyword_search(queryset=shown, q=words).garments
    total = matches.count()
    assert 0 < total < shown.count()
    expect(screen.locator("#list-count")).to_contain_text(f"{total:,} garment")
    ids = card_ids(screen)
    assert ids == list(matches.values_list("pk", flat=True)[: len(ids)])  # best match first
    first = Garment.objects.get(pk=ids[0])
    assert "black" in f"{first.title} {first.colour}".lower()
    screen.screenshot(path=str(OUTPUT / f"keyword-{screen.screen}.png"), full_page=True)

    box = screen.locator("#site-q")
    box.fill("zzqqxx glorbnik")
    box.press("Enter")
    empty = screen.locator("#empty-state")
    expect(empty).to_be_visible()
    expect(empty).to_contain_text("No garment matches “zzqqxx glorbnik”")
    expect(screen.locator(CARDS)).to_have_count(0)
    empty.get_by_role("link", name="Browse the categories").click()
    expect(screen).to_have_url(re.compile(r"/categories/$"))


def test_keyword_search_filters_with_facet_counts(site, screen, shown):
    q = "black"
    matches = search.keyword.keyword_search(queryset=shown, q=q).garments
    ids = list(matches.values_list("pk", flat=True))
    choose_facets_one_by_one(
        screen, f"{site}/search/?q={q}", shown.filter(pk__in=ids), search.facets.FACETS
    )
    screen.screenshot(path=str(OUTPUT / f"keyword-facets-{screen.screen}.png"), full_page=True)


def test_category_page_filters_with_facet_counts(site, screen, shown):
    category = Category.objects.get(slug="tshirts")
    choose_facets_one_by_one(
        screen,
        f"{site}/categories/{category.slug}/",
        shown.filter(category=category),
        search.FILTER_FIELDS,
    )


# --------------------------------------------------------------------------- search by photo


def test_photo_search_filters_with_counts(site, screen, shown, trained_catalogue):
    """The search by photo's menus count like the database; choosing a value in each menu
    searches again within it (every result has it) and the other menus count within it."""
    from playwright.sync_api import expect

    searchable = shown.filter(status=Garment.Status.READY)
    # A T-shirt with every attribute (it keeps finding itself as the filters add up).
    query = (
        Garment.objects.filter(pk__in=trained_catalogue.ids[Garment], category__slug="tshirts")
        .exclude(gender="")
        .exclude(colour="")
        .exclude(season="")
        .exclude(usage="")
        .order_by("sku")
        .first()
    )
    assert query is not None
    screen.goto(site + "/")
    assert menus_on_page(screen) == expected_facets(searchable, {}, search.facets.FACETS)
    screen.set_input_files("#photo-file", query.image.path)
    expect(screen.locator("#crop-panel")).to_be_visible()
    screen.locator("#search-button").click()
    expect(screen.locator(RESULTS)).to_have_count(10, timeout=SEARCH_WAIT_MS)
    chosen: dict[str, str] = {}
    # One filter after another, each kept: the results narrow, the counts follow.
    for name in ("gender", "season", "usage", "colour", "category"):
        menus = menus_on_page(screen)
        assert menus == expected_facets(searchable, chosen, search.facets.FACETS), name
        # The photo's own value where it has one, so that the search still finds some.
        own = str(Garment.objects.filter(pk=query.pk).values_list(COLUMNS[name], flat=True)[0])
        value = own if menus[name].get(own) else narrowing_value(menus[name])
        select = screen.locator(f'#search-form select[data-filter="{name}"]')
        check_reachable(screen, select)
        if name == "category":
            slug = Category.objects.get(name=value).slug
            select.select_option(slug)
            meta = f"in {value}"
        else:
            select.select_option(value)
            meta = value
        expect(screen.locator(".results-meta")).to_contain_text(meta, timeout=SEARCH_WAIT_MS)
        expect(screen.locator("#search-form")).to_have_attribute(
            "aria-busy", "false", timeout=SEARCH_WAIT_MS
        )
        chosen[name] = value
        ids = card_ids(screen, RESULTS)
        assert ids and len(ids) <= 10
        for done, done_value in chosen.items():
            check_cards_have(screen, done, done_value, selector=RESULTS)
        assert menus_on_page(screen) == expected_facets(searchable, chosen, search.facets.FACETS)
    assert query.pk == card_ids(screen, RESULTS)[0]  # it has every value chosen
    screen.screenshot(path=str(OUTPUT / f"photo-filters-{screen.screen}.png"), full_page=True)
