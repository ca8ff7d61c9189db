"""Issue #16's duplicate review page in a real headless Chromium (Debian's chromium, driven by
Playwright) against a live server, as staff: the garment list's "possible duplicate" filter,
the garment page's link to the review, both photos side by side, then "Same product: merge"
on one pair and "Different products" on the next. Screenshots go to test-output/.

The flags are written here, not found by indexing: which photos get flagged is the business of
tests/catalogue/test_duplicates.py; this module is about what staff see and click."""

from __future__ import annotations

import io

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image

from retrieval import catalogue
from retrieval.models import Category, Garment, NearDuplicate
from tests.conftest import OUTPUT
from tests.factories import jpeg_bytes

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
]


def photo(colour) -> bytes:
    """A distinct 90x120 PNG (exact duplicates are refused on the way in)."""
    image = Image.open(io.BytesIO(jpeg_bytes(colour, size=(90, 120), pattern=True)))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def add(sku: str, colour, category: Category) -> Garment:
    garment = Garment(sku=sku, title=f"Shirt {sku}", category=category)
    garment.image = SimpleUploadedFile(f"{sku}.png", photo(colour))
    return catalogue.save_garment(garment=garment, image_changed=True)


@pytest.fixture
def staff_page(browser, live_server, django_user_model, settings, fast_password_hashing):
    """A superuser logged in through the admin's own login form."""
    settings.ROOT_URLCONF = "tests.live_urls"  # the site plus its media files
    django_user_model.objects.create_user(
        "boss", password="pw-boss-1", is_staff=True, is_superuser=True
    )
    context = browser.new_context(viewport={"width": 1280, "height": 900})
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


def test_staff_review_two_pairs_merge_one_and_keep_the_other_apart(staff_page):
    shirts = Category.objects.create(name="Shirts", slug="shirts")
    merged = [add("R1", (20, 40, 200), shirts), add("R2", (24, 44, 196), shirts)]
    apart = [add("G1", (20, 160, 40), shirts), add("G2", (26, 150, 44), shirts)]
    kept_apart = NearDuplicate.objects.create(
        garment=apart[1],
        original=apart[0],
        phash_distance=2,
        fused_distance=0.04,
        photo_distance=0.002,
    )
    same = NearDuplicate.objects.create(  # the newest: reviewed first
        garment=merged[1],
        original=merged[0],
        phash_distance=1,
        fused_distance=0.02,
        photo_distance=0.001,
    )
    page = staff_page

    # The garment list's filter: the four garments of the two open flags.
    page.goto(f"{page.base}/admin/retrieval/garment/?duplicate=open")
    assert page.locator("#result_list tbody tr").count() == 4
    # The flagged garment's page names the other one and links to the review.
    page.goto(f"{page.base}/admin/retrieval/garment/{merged[1].pk}/change/")
    assert "R1 Shirt R1" in page.inner_text("body")
    page.click("text=review side by side")
    page.wait_for_url(f"**/nearduplicate/{same.pk}/review/")
    # Both photos load (their files served), side by side, the older one on the left.
    loaded = page.eval_on_selector_all(
        "img.duplicate-photo",
        "els => els.map(e => [e.naturalWidth, e.getBoundingClientRect().x, e.alt])",
    )
    assert [alt for _, _, alt in loaded] == ["photo of R1", "photo of R2"]
    assert all(width == 90 for width, _, _ in loaded) and loaded[0][1] < loaded[1][1]
    assert page.inner_text("#flag-status") == "to review"
    page.screenshot(path=str(OUTPUT / "duplicate-review.png"), full_page=True)

    # "Same product: merge": the next open flag's review comes up.
    page.click("button:has-text('Same product: merge')")
    page.wait_for_url(f"**/nearduplicate/{kept_apart.pk}/review/")
    assert "R2 and R1 are one product" in page.inner_text(".messagelist")
    same.refresh_from_db()
    assert same.status == NearDuplicate.Status.SAME
    assert same.reviewed_by is not None and same.reviewed_by.username == "boss"
    groups = dict(Garment.objects.values_list("sku", "product_group"))
    assert groups == {"R1": merged[0].pk, "R2": merged[0].pk, "G1": None, "G2": None}

    # "Different products": no flag left, back to the list of flags.
    page.click("button:has-text('Different products')")
    page.wait_for_url("**/admin/retrieval/nearduplicate/")
    assert "G2 and G1 are different products" in page.inner_text(".messagelist")
    kept_apart.refresh_from_db()
    assert kept_apart.status == NearDuplicate.Status.DIFFERENT
    assert Garment.objects.filter(product_group__isnull=False).count() == 2

    # A decided pair shows its decision and offers no buttons any more.
    page.goto(f"{page.base}/admin/retrieval/nearduplicate/{same.pk}/review/")
    assert page.inner_text("#flag-status") == "same product"
    assert page.locator("button[name=decision]").count() == 0
    # The filters follow: nothing to review, the merged pair under "merged".
    page.goto(f"{page.base}/admin/retrieval/garment/?duplicate=open")
    assert page.locator("#result_list tbody tr").count() == 0
    page.goto(f"{page.base}/admin/retrieval/garment/?duplicate=merged")
    rows = page.locator("#result_list tbody tr")
    assert rows.count() == 2
    assert {"R1", "R2"} <= set(page.inner_text("#result_list").split())
