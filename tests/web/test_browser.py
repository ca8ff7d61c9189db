"""End to end in a real headless Chromium (Debian's chromium, driven by Playwright) against a live
server over the trained catalogue: search by photo, crop, switch to 20 results, open a result,
bad files, a phone-sized screen. Screenshots go to test-output/ (gitignored)."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from retrieval.models import Garment
from tests.conftest import OUTPUT

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
]


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(30_000)  # a search runs the CNN on a busy CI machine
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert errors == [], f"JavaScript errors: {errors}"


@pytest.fixture
def phone(browser):
    context = browser.new_context(
        viewport={"width": 375, "height": 812},
        device_scale_factor=2,
        is_mobile=True,
        has_touch=True,
    )
    context.set_default_timeout(30_000)
    yield context.new_page()
    context.close()


@pytest.fixture
def query(trained_catalogue) -> Garment:
    return (
        Garment.objects.filter(pk__in=trained_catalogue.ids[Garment], category__slug="tshirts")
        .order_by("sku")
        .first()
    )


def result_ids(page) -> list[int]:
    return page.locator("#result-list > li.card").evaluate_all(
        "cards => cards.map(card => Number(card.dataset.garmentId))"
    )


RECORD_UPLOADS = """() => {
    // Test instrumentation: remember the size of each image the page uploads.
    window.uploads = [];
    const send = window.fetch;
    window.fetch = async (url, options) => {
        const image = options && options.body && options.body.get && options.body.get("image");
        if (image) {
            const bitmap = await createImageBitmap(image);
            window.uploads.push([bitmap.width, bitmap.height, image.type]);
        }
        return send(url, options);
    };
}"""


def uploads(page) -> list:
    return page.evaluate("window.uploads")


# --------------------------------------------------------------------------- tests


def test_search_by_photo_switch_to_20_and_open_a_result(site, page, query):
    from playwright.sync_api import expect

    page.goto(site + "/")
    page.set_input_files("#photo-file", query.image.path)
    expect(page.locator("#crop-panel")).to_be_visible()
    expect(page.locator("#crop-info")).to_contain_text("whole photo")
    page.locator("#search-button").click()
    cards = page.locator("#result-list > li.card")
    expect(cards).to_have_count(10)
    assert result_ids(page)[0] == query.pk  # the garment's own photo finds it first
    expect(page.locator("#results-heading")).to_be_focused()
    expect(page.locator("#search-status")).to_have_text("Top 10 matches found.")
    expect(page.locator(".results-meta")).to_contain_text(" ms")

    page.locator("label[for='id_top_2']").click()  # the "20" of the results switch
    expect(cards).to_have_count(20)
    assert query.pk in result_ids(page)
    page.screenshot(path=str(OUTPUT / "results-desktop.png"), full_page=True)

    second = cards.nth(1)
    opened = Garment.objects.get(pk=int(second.get_attribute("data-garment-id")))
    second.locator("a").click()
    page.wait_for_url(f"**/garments/{opened.pk}/?search=*")  # the link names the search
    expect(page.locator("h1")).to_have_text(opened.title)
    expect(page.locator(".similar .card")).to_have_count(10)
    page.screenshot(path=str(OUTPUT / "garment-desktop.png"), full_page=True)


def test_the_search_uses_the_cropped_part(site, page, query):
    from playwright.sync_api import expect

    page.goto(site + "/")
    page.evaluate(RECORD_UPLOADS)
    page.set_input_files("#photo-file", query.image.path)
    stage = page.locator("#crop-stage img")
    expect(stage).to_be_visible()
    box = stage.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.2, box["y"] + box["height"] * 0.25)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.7, box["y"] + box["height"] * 0.6, steps=5)
    page.mouse.up()
    expect(page.locator("#crop-info")).to_contain_text("framed part")
    page.locator("#crop-panel").screenshot(path=str(OUTPUT / "crop-desktop.png"))
    page.locator("#search-button").click()
    expect(page.locator("#result-list > li.card")).to_have_count(10)
    width, height = Image.open(query.image.path).size
    (crop_width, crop_height, kind), *_ = uploads(page)
    assert kind == "image/jpeg"
    assert crop_width == pytest.approx(width * 0.5, abs=3)
    assert crop_height == pytest.approx(height * 0.35, abs=3)

    # Keyboard: Escape goes back to the whole photo, and the search follows with it.
    page.locator("#crop-box").focus()
    page.keyboard.press("Escape")
    expect(page.locator("#crop-info")).to_contain_text("whole photo")
    page.wait_for_function("window.uploads.length === 2")
    assert uploads(page)[1][:2] == [width, height]
    expect(page.locator("#busy")).to_be_hidden()
    # Arrow keys frame the middle of the photo, Shift + arrows resize the frame.
    page.keyboard.press("ArrowRight")
    page.keyboard.press("Shift+ArrowLeft")
    expect(page.locator("#crop-info")).to_contain_text("framed part")


def test_busy_state_while_searching(site, page, query):
    from playwright.sync_api import expect

    held = []

    def hold_searches(route):
        if route.request.method == "POST":
            held.append(route)
        else:
            route.continue_()

    page.goto(site + "/")
    page.route(f"{site}/", hold_searches)
    page.set_input_files("#photo-file", query.image.path)
    expect(page.locator("#crop-panel")).to_be_visible()
    page.locator("#search-button").click()
    expect(page.locator("#busy")).to_be_visible()
    expect(page.locator("#search-button")).to_be_disabled()
    expect(page.locator("#results")).to_have_attribute("aria-busy", "true")
    assert held, "the search request was not sent"
    held[0].continue_()
    expect(page.locator("#result-list > li.card")).to_have_count(10)
    expect(page.locator("#busy")).to_be_hidden()
    expect(page.locator("#search-button")).to_be_enabled()


def test_paste_and_drop_load_the_photo(site, page, query):
    from playwright.sync_api import expect

    page.goto(site + "/")
    make_file = """async (url) => {
        const blob = await (await fetch(url)).blob();
        const data = new DataTransfer();
        data.items.add(new File([blob], "pasted.jpg", {type: "image/jpeg"}));
        return data;
    }"""
    transfer = page.evaluate_handle(make_file, query.image.url)
    page.evaluate(
        "data => document.dispatchEvent(new ClipboardEvent('paste', {clipboardData: data}))",
        transfer,
    )
    expect(page.locator("#crop-panel")).to_be_visible()
    expect(page.locator("#file-name")).to_have_text("Photo: pasted.jpg")
    transfer = page.evaluate_handle(make_file, query.image.url)
    page.locator("#dropzone").dispatch_event("drop", {"dataTransfer": transfer})
    expect(page.locator("#crop-panel")).to_be_visible()
    page.locator("#search-button").click()
    expect(page.locator("#result-list > li.card")).to_have_count(10)


def test_a_file_that_is_not_an_image_is_explained(site, page):
    from playwright.sync_api import expect

    page.goto(site + "/")
    page.set_input_files(
        "#photo-file",
        files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"not a photo\n" * 20}],
    )
    alert = page.locator("#results [role=alert]")
    expect(alert).to_contain_text("that file is not an image")
    expect(page.locator("#crop-panel")).to_be_hidden()


def test_an_image_too_large_is_explained_before_uploading(site, page, settings):
    from playwright.sync_api import expect

    settings.RETRIEVAL_MAX_UPLOAD_BYTES = 1000
    page.goto(site + "/")
    # A file this browser cannot decode (a photo it can decode is re-encoded smaller, #15).
    big = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8
    page.set_input_files(
        "#photo-file",
        files=[{"name": "big.png", "mimeType": "image/png", "buffer": big}],
    )
    expect(page.locator("#photo-message")).to_contain_text("image too large")


def test_phone_sized_screen(site, phone, query):
    from playwright.sync_api import expect

    phone.goto(site + "/")
    expect(phone.get_by_text("Take a photo")).to_be_visible()  # touch screen: the camera
    phone.set_input_files("#photo-file", query.image.path)
    expect(phone.locator("#crop-panel")).to_be_visible()
    phone.locator("#search-button").click()
    expect(phone.locator("#result-list > li.card")).to_have_count(10)
    overflow = phone.evaluate("document.documentElement.scrollWidth")
    assert overflow <= 375, f"the page is {overflow} px wide on a 375 px screen"
    phone.screenshot(path=str(OUTPUT / "results-375px.png"), full_page=True)
    phone.goto(f"{site}/garments/{query.pk}/")
    assert phone.evaluate("document.documentElement.scrollWidth") <= 375
    phone.screenshot(path=str(OUTPUT / "garment-375px.png"), full_page=True)


def test_admin_evaluation_report_page(site, page, trained_catalogue, django_user_model):
    """A staff user opens a report produced by the real evaluation run over the trained
    catalogue: tables, the per-category chart, the example grids and both downloads."""
    import json

    from playwright.sync_api import expect

    from retrieval.evaluation import run_evaluation

    report = run_evaluation(examples=3)
    metrics = report.metrics
    categories = sorted(metrics["per_category_p@5"]["fused"])
    assert categories, "the held-out split of the trained catalogue has no queries"
    django_user_model.objects.create_superuser("staff", "staff@example.com", "pw-for-the-test")
    console_errors: list[str] = []

    def on_console(message) -> None:
        # Chromium asks every site for /favicon.ico; the site has none (not this page's error).
        if message.type == "error" and not message.location.get("url", "").endswith("/favicon.ico"):
            console_errors.append(f"{message.text} ({message.location.get('url')})")

    page.on("console", on_console)

    page.goto(site + "/admin/login/?next=/admin/")
    page.fill("#id_username", "staff")
    page.fill("#id_password", "pw-for-the-test")
    page.locator("input[type=submit]").click()
    page.wait_for_url("**/admin/")
    page.goto(f"{site}/admin/retrieval/evaluationreport/{report.pk}/change/")

    # Tables: a row per mode and search kind, a column per metric, values from the report.
    table = page.locator("#evaluation-table")
    expect(table).to_be_visible()
    # A row per mode (fused, deep, and rerank where enabled) and search (cluster, exact).
    expect(table.locator("tbody tr")).to_have_count(2 * len(metrics["modes"]))
    expect(table.locator("thead th")).to_have_count(1 + len(metrics["modes"]["fused"]))
    fused_row = table.locator("tbody tr", has=page.locator("th", has_text="fused (cluster)"))
    shown = float(fused_row.locator("td").first.inner_text())
    assert shown == pytest.approx(metrics["modes"]["fused"]["p@5"], abs=0.0006)
    expect(page.locator("h2", has_text=f"({metrics['queries']} queries")).to_be_visible()

    # Chart: one labelled bar per category and mode, widths proportional to p@5.
    chart = page.locator("#evaluation-chart")
    expect(chart).to_be_visible()
    bars = chart.locator("rect:has(title)")
    expect(bars).to_have_count(2 * len(categories))
    for name in categories:
        expect(chart.locator("text", has_text=name).first).to_be_visible()
    widths = bars.evaluate_all(
        "bars => bars.map(b => [b.querySelector('title').textContent, b.getBBox().width])"
    )
    full = max(w for _, w in widths) / max(
        v["p@5"] for mode in ("fused", "deep") for v in metrics["per_category_p@5"][mode].values()
    )
    for title, width in widths:
        name, _, value = title.rpartition(": ")
        category, mode = name.rsplit(" ", 1)
        expected = metrics["per_category_p@5"][mode][category]["p@5"]
        assert width == pytest.approx(expected * full, abs=1.0), title
    assert any(w > 0 for _, w in widths)

    # Example grids: each example shows its query and the top 5 of both modes, with images.
    examples = page.locator("fieldset", has_text="Example queries")
    expect(examples.locator("figure img")).to_have_count(
        sum(
            len([i for i in ex[mode] if i])
            for ex in metrics["examples"]
            for mode in ("fused", "deep")
        )
    )
    loaded = examples.locator("img").evaluate_all(
        "images => images.map(i => i.complete && i.naturalWidth > 0)"
    )
    assert loaded and all(loaded), "an example image did not load"
    page.screenshot(path=str(OUTPUT / "admin-evaluation-report.png"), full_page=True)

    # Downloads: the JSON is the report's metrics; the CSV has one row per value.
    with page.expect_download() as download:
        page.get_by_role("link", name="JSON").click()
    assert download.value.suggested_filename == f"evaluation-{report.pk}.json"
    assert json.loads(Path(download.value.path()).read_text()) == metrics
    with page.expect_download() as download:
        page.get_by_role("link", name="CSV").click()
    assert download.value.suggested_filename == f"evaluation-{report.pk}.csv"
    lines = Path(download.value.path()).read_text().splitlines()
    assert lines[0] == "search,mode,metric,value"
    assert f"cluster,fused,p@5,{metrics['modes']['fused']['p@5']}" in lines
    assert console_errors == []
