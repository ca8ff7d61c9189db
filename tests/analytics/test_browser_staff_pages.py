"""The search dashboard and the duplicate review page in a real headless Chromium (Debian's
chromium, Playwright) against a live server: charts drawn, CSV exported, a pair merged."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import re_path
from django.views.static import serve
from PIL import Image

from fashionsite import urls as site_urls
from retrieval import catalogue
from retrieval.models import Category, Garment, NearDuplicate
from tests.analytics.test_search_log import known_log
from tests.factories import jpeg_bytes

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
OUTPUT = Path(__file__).resolve().parent.parent.parent / "test-output"

# The live server's URLconf: the site's, plus media files as `make run` serves them (DEBUG).
urlpatterns = [
    *site_urls.urlpatterns,
    re_path(r"^media/(?P<path>.*)$", serve, {"document_root": settings.MEDIA_ROOT}),
]


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    if not CHROMIUM.exists():
        pytest.skip("no /usr/bin/chromium: apt-get install chromium")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        with sync_api.sync_playwright() as playwright:
            chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            yield chromium
            chromium.close()


@pytest.fixture
def staff_page(browser, live_server, django_user_model, settings, fast_password_hashing):
    settings.ROOT_URLCONF = __name__
    django_user_model.objects.create_user(
        "boss", password="pw-boss-1", is_staff=True, is_superuser=True
    )
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    context.set_default_timeout(30_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{live_server.url}/admin/login/")
    page.fill("#id_username", "boss")
    page.fill("#id_password", "pw-boss-1")
    page.click("input[type=submit]")
    page.wait_for_url(f"{live_server.url}/admin/")
    page.base = live_server.url
    OUTPUT.mkdir(exist_ok=True)
    yield page
    context.close()
    assert errors == [], f"JavaScript errors: {errors}"


def test_the_dashboard_draws_its_charts_and_exports_csv(staff_page):
    known_log()
    page = staff_page
    page.goto(f"{page.base}/admin/retrieval/searchlog/")
    page.click("text=Dashboard")
    page.fill("#id_start", "2026-03-01")
    page.fill("#id_end", "2026-03-02")
    page.click("button:has-text('Show')")
    page.wait_for_url("**/dashboard/?start=2026-03-01&end=2026-03-02")
    assert page.inner_text("#kpi-searches strong") == "6"
    assert page.inner_text("#kpi-latency strong") == "35.0 / 762.5 ms"
    assert page.inner_text("#kpi-no-click strong") == "3"
    # Two days, 24 hours: one bar each, heights in proportion.
    assert page.locator("#chart-days rect.bar").count() == 2
    assert page.locator("#chart-hours rect.bar").count() == 24
    heights = page.eval_on_selector_all(
        "#chart-hours rect.bar", "els => els.map(e => e.getBBox().height)"
    )
    assert heights[9] > heights[21] > 0 and heights[0] == 0
    assert page.locator("#chart-latency polyline").count() == 2
    assert page.inner_text("#top-categories tbody tr:first-child td:first-child") == "Tshirts"
    assert page.locator("#slowest tbody tr").count() == 6
    page.screenshot(path=str(OUTPUT / "search-dashboard.png"), full_page=True)
    with page.expect_download() as download:
        page.click("#csv-export")
    text = Path(download.value.path()).read_text()
    assert "totals,searches,6," in text


def photo(colour) -> bytes:
    image = Image.open(io.BytesIO(jpeg_bytes(colour, size=(90, 120), pattern=True)))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def test_the_review_page_shows_the_pair_and_merges_it(staff_page):
    category = Category.objects.create(name="Shirts")
    pair = []
    for sku, colour in (("R1", (20, 40, 200)), ("R2", (22, 42, 198))):
        garment = Garment(sku=sku, title=f"Shirt {sku}", category=category)
        garment.image = SimpleUploadedFile(f"{sku}.png", photo(colour))
        pair.append(catalogue.save_garment(garment=garment, image_changed=True))
    flag = NearDuplicate.objects.create(
        garment=pair[1], original=pair[0], phash_distance=1, fused_distance=0.02
    )
    page = staff_page
    page.goto(f"{page.base}/admin/retrieval/garment/?duplicate=open")
    assert page.locator("#result_list tbody tr").count() == 2
    page.goto(f"{page.base}/admin/retrieval/garment/{pair[1].pk}/change/")
    page.click("text=review side by side")
    page.wait_for_url(f"**/nearduplicate/{flag.pk}/review/")
    # Both photos load, side by side.
    loaded = page.eval_on_selector_all(
        "img.duplicate-photo", "els => els.map(e => [e.naturalWidth, e.getBoundingClientRect().x])"
    )
    assert len(loaded) == 2 and all(w > 0 for w, _ in loaded) and loaded[0][1] < loaded[1][1]
    page.screenshot(path=str(OUTPUT / "duplicate-review.png"), full_page=True)
    page.click("button:has-text('Same product: merge')")
    page.wait_for_url("**/nearduplicate/")
    assert "are one product" in page.inner_text(".messagelist")
    flag.refresh_from_db()
    assert flag.status == NearDuplicate.Status.SAME
    assert set(Garment.objects.values_list("product_group", flat=True)) == {pair[0].pk}
