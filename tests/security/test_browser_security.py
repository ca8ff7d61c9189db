"""Text from catalogue imports stays inert, in a real browser: a garment imported from a CSV
whose title (and category) is markup is shown literally on the shop's search results, its
page, its category page, and the admin's list and form, and no JavaScript dialog ever opens.

Headless Chromium through Playwright, with the live server and fixtures of
tests/web/test_browser.py.
"""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from retrieval import catalogue, indexing
from retrieval.models import Garment, ImportJob
from tests.factories import jpeg_bytes
from tests.images_corpus import catalogue_zip
from tests.web.test_browser import page  # noqa: F401 - fixture used below

pytestmark = [
    pytest.mark.security,
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
]

PASSWORD = "a-long-test-password-2"
TITLES = {
    "script": "<script>alert(1)</script>",
    "img-onerror": "<img src=x onerror=alert(1)>",
}
CATEGORY = "Tees <svg onload=alert(2)>"


def shown_as_text(title: str) -> re.Pattern:
    """A result card's title: the text itself, after "Result N: " for screen readers."""
    return re.compile(rf"^(Result \d+: )?{re.escape(title)}$")


@pytest.fixture
def dialogs(page):  # noqa: F811 - the fixture imported above
    """Every JavaScript dialog the page opens (dismissed at once), checked to be caught."""
    opened: list[str] = []

    def record(dialog) -> None:
        opened.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", record)
    page.goto("about:blank")
    page.evaluate("() => alert('control')")  # the listener does see dialogs
    assert opened == ["control"]
    opened.clear()
    return opened


@pytest.fixture
def hostile_garment(request, site, tmp_path, private_features_queue):
    """Imported from a catalogue CSV with a markup title and category, then indexed (the CNN
    runs here, while the indexing task the import queued waits in a queue no worker reads), so
    a search by its photo finds it."""
    title = TITLES[request.param]
    image = jpeg_bytes((200, 40, 160), size=(60, 80), pattern=True)
    source = catalogue_zip(tmp_path / "c.zip", [("XSS1", CATEGORY, title)], {"XSS1": image})
    job = catalogue.import_catalog(source=source)
    assert job.status == ImportJob.Status.DONE and job.created == 1, job.problems
    garment = Garment.objects.get(sku="XSS1")
    assert garment.title == title and garment.category.name == CATEGORY
    indexing.index_garments(garment_ids=[garment.pk])
    garment.refresh_from_db()
    assert garment.status == Garment.Status.READY, garment.error
    yield garment
    garment.image.delete(save=False)


@pytest.mark.parametrize("hostile_garment", list(TITLES), indirect=True)
def test_markup_from_a_csv_import_is_shown_as_text_everywhere(
    site,
    page,  # noqa: F811
    dialogs,
    hostile_garment,
    django_user_model,
):
    garment = hostile_garment
    title = garment.title

    # The shop: search by the garment's photo; the results are inserted by the page's script.
    page.goto(site + "/")
    page.set_input_files("#photo-file", garment.image.path)
    expect(page.locator("#crop-panel")).to_be_visible()
    page.locator("#search-button").click()
    card = page.locator(f'#result-list > li.card[data-garment-id="{garment.pk}"]')
    expect(card.locator(".card-title")).to_have_text(shown_as_text(title))
    expect(card.locator(".card-meta")).to_contain_text(CATEGORY)

    page.goto(f"{site}/garments/{garment.pk}/")
    expect(page.locator("h1")).to_have_text(title)
    assert page.title() == f"{title} · fashionsite"
    expect(page.locator(".breadcrumbs")).to_contain_text(CATEGORY)

    page.goto(f"{site}/categories/{garment.category.slug}/")
    expect(page.locator("h1")).to_have_text(CATEGORY)
    expect(page.locator(f'li.card[data-garment-id="{garment.pk}"] .card-title')).to_have_text(title)

    # The admin: its list and the garment's form.
    django_user_model.objects.create_superuser("curator", "c@example.com", PASSWORD)
    page.goto(f"{site}/admin/login/?next=/admin/retrieval/garment/")
    page.fill("#id_username", "curator")
    page.fill("#id_password", PASSWORD)
    page.locator("input[type=submit]").click()
    page.wait_for_url("**/admin/retrieval/garment/")
    row = page.locator("#result_list tbody tr", has_text=garment.sku)
    expect(row.locator("td.field-title")).to_have_text(title)
    page.goto(f"{site}/admin/retrieval/garment/{garment.pk}/change/")
    expect(page.locator("#id_title")).to_have_value(title)
    expect(page.locator("#content > h2")).to_have_text(f"{garment.sku} {title}")
    page.goto(f"{site}/admin/retrieval/category/")
    expect(page.locator("#result_list")).to_contain_text(CATEGORY)

    assert dialogs == []
    # Nothing from the payloads became markup (the <img> variant would have loaded "x").
    assert page.evaluate("document.querySelectorAll('img[src=\"x\"], svg[onload]').length") == 0
