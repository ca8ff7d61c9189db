"""The search analytics in a real headless Chromium (Debian's chromium, Playwright) against a
live server over the trained catalogue: a shopper's search and a click on a result recorded,
then the staff dashboard over a known log drawing its charts and exporting its CSV.
Screenshots go to test-output/."""

from __future__ import annotations

from pathlib import Path

import pytest

from retrieval import analytics
from retrieval.models import Garment, SearchLog
from tests.analytics.log import known_log
from tests.conftest import OUTPUT, SCREENS, wait_until

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def page(browser):
    context = browser.new_context(**SCREENS["desktop"], accept_downloads=True)
    context.set_default_timeout(60_000)  # a search runs the CNN on a busy CI machine
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert errors == [], f"JavaScript errors: {errors}"


def test_a_search_and_a_click_are_recorded(site, page, trained_catalogue):
    from playwright.sync_api import expect

    query = (
        Garment.objects.filter(pk__in=trained_catalogue.ids[Garment], category__slug="tshirts")
        .order_by("sku")
        .first()
    )
    assert query is not None
    page.goto(site + "/")
    page.set_input_files("#photo-file", query.image.path)
    page.locator("#search-button").click()
    cards = page.locator("#result-list > li.card")
    expect(cards).to_have_count(10)
    assert wait_until(lambda: SearchLog.objects.exists(), timeout=30)
    row = SearchLog.objects.get()
    assert row.channel == "web" and len(row.garment_ids) == 10
    cards.nth(1).locator("a.card-link").click()
    page.wait_for_url(f"**/garments/{row.garment_ids[1]}/?search={row.id}")
    assert wait_until(
        lambda: SearchLog.objects.filter(pk=row.pk, first_click_rank=2).exists(), timeout=30
    )


def test_the_dashboard_draws_its_charts_and_exports_csv(
    site, page, django_user_model, fast_password_hashing
):
    from django.contrib.auth.models import Permission

    user = django_user_model.objects.create_user("analyst", password="pw-analyst-1", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_searchlog"))
    known_log()
    analytics.rollup_searches()  # the known log's hours come from the roll-up
    page.goto(f"{site}/admin/login/?next=/admin/retrieval/searchlog/")
    page.fill("#id_username", "analyst")
    page.fill("#id_password", "pw-analyst-1")
    page.locator("input[type=submit]").click()
    page.wait_for_url("**/admin/retrieval/searchlog/")
    page.click("text=Dashboard")
    page.fill("#id_start", "2026-03-01")
    page.fill("#id_end", "2026-03-02")
    page.click("button:has-text('Show')")
    page.wait_for_url("**/dashboard/?start=2026-03-01&end=2026-03-02")
    assert page.inner_text("#kpi-searches strong") == "6"
    p50, p95 = page.inner_text("#kpi-latency strong").removesuffix(" ms").split(" / ")
    assert 30.0 <= float(p50) <= 44.0 and 909.0 <= float(p95) <= 1100.0
    assert page.inner_text("#kpi-no-click strong") == "3"
    assert page.inner_text("#kpi-ctr-1 strong") == "17 %"
    # Two days, 24 hours: one bar each, heights in proportion.
    assert page.locator("#chart-days rect.bar").count() == 2
    assert page.locator("#chart-hours rect.bar").count() == 24
    heights = page.eval_on_selector_all(
        "#chart-hours rect.bar", "els => els.map(e => e.getBBox().height)"
    )
    assert heights[9] > heights[21] > 0 and heights[0] == 0
    assert heights[9] == pytest.approx(3 * heights[21], rel=0.01)
    assert page.locator("#chart-latency polyline").count() == 2
    assert page.inner_text("#top-categories tbody tr:first-child td:first-child") == "Tshirts"
    assert page.locator("#slowest tbody tr").count() == 6
    page.screenshot(path=str(OUTPUT / "search-dashboard.png"), full_page=True)
    with page.expect_download() as download:
        page.click("#csv-export")
    assert download.value.suggested_filename == "searches-20260301-20260302.csv"
    text = Path(download.value.path()).read_text()
    assert "totals,searches,6," in text and "per day,2026-03-01,3," in text
