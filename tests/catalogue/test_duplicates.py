"""Duplicate photos through every way in (API, admin, import) and their review, on the real
PostgreSQL, the real trained catalogue (300 garments of the shared sample) and the real CNN."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image, ImageEnhance
from rest_framework.test import APIClient

from retrieval import catalogue, images, indexing, search
from retrieval.models import Category, Garment, ImportJob, NearDuplicate
from retrieval.search import duplicates as near
from tests.api.helpers import client_with_token
from tests.factories import jpeg_bytes

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("no_search_throttle")]

GARMENTS = "/api/v1/garments/"
HEADER = (
    "id,image,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,"
    "productDisplayName\n"
)


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def studio_photo(colour=(30, 90, 160)) -> Image.Image:
    return Image.open(io.BytesIO(jpeg_bytes(colour, size=(90, 120), pattern=True))).convert("RGB")


@pytest.fixture
def staff_user(django_user_model):
    return django_user_model.objects.create_user(
        "curator", password="pw-x", is_staff=True, is_superuser=True
    )


@pytest.fixture
def staff(staff_user) -> APIClient:
    return client_with_token(staff_user)


@pytest.fixture
def category(db) -> Category:
    return Category.objects.create(name="Duplicate test shirts")


def post_garment(client, *, sku: str, data: bytes, name: str, category: Category, **extra):
    upload = SimpleUploadedFile(name, data, content_type="application/octet-stream")
    body = {"sku": sku, "title": f"Garment {sku}", "category": category.slug, "image": upload}
    return client.post(GARMENTS, {**body, **extra}, format="multipart")


# --------------------------------------------------------------------------- fingerprints


def test_the_pixel_digest_ignores_the_file_and_sees_every_pixel():
    photo = studio_photo()
    png = images.open_image(encoded(photo, "PNG"))
    bmp = images.open_image(encoded(photo, "BMP"))
    tiff = images.open_image(encoded(photo, "TIFF", compression="tiff_lzw"))
    assert images.pixel_digest(png) == images.pixel_digest(bmp) == images.pixel_digest(tiff)
    changed = photo.copy()
    changed.putpixel((0, 0), (254, 255, 255))
    assert images.pixel_digest(images.open_image(encoded(changed, "PNG"))) != images.pixel_digest(
        png
    )


def smooth_photo(colour, box) -> Image.Image:
    """A garment-like shape with soft shading on a light background (no aliasing stripes)."""
    from PIL import ImageDraw, ImageFilter

    photo = Image.new("RGB", (240, 320), (245, 245, 245))
    ImageDraw.Draw(photo).ellipse(box, fill=colour)
    return photo.filter(ImageFilter.GaussianBlur(6))


def test_the_perceptual_hash_of_a_copy_is_near_and_of_another_photo_far(settings):
    photo = smooth_photo((30, 90, 160), (40, 60, 200, 280))
    copy = images.open_image(encoded(photo.resize((168, 224)), "JPEG", quality=50))
    other = smooth_photo((30, 90, 160), (20, 150, 220, 240))
    h = images.perceptual_hash(photo)
    assert len(h) == images.PHASH_BITS // 8 == 32
    limit = settings.RETRIEVAL_NEAR_DUPLICATE_PHASH_BITS
    assert images.hash_distance(h, images.perceptual_hash(copy)) <= limit
    assert images.hash_distance(h, images.perceptual_hash(other)) > limit
    assert images.hash_distance(h, h) == 0


def test_the_thumbnail_of_a_copy_is_near_and_of_another_photo_or_colour_far(settings):
    """The thumbnail signal that confirms a near-duplicate: a resized, re-compressed or
    brightened copy stays under the shipped threshold; the same shape moved, or the same
    photo in another colour (a colourway of one product, shot alike), stays above it."""
    photo = smooth_photo((30, 90, 160), (40, 60, 200, 280))
    signature = images.thumbnail_signature(photo)
    assert len(signature) == 16 * 16 * 3
    copies = [
        photo.resize((168, 224)),
        photo.resize((480, 640)),
        ImageEnhance.Brightness(photo).enhance(1.15),
    ]
    limit = settings.RETRIEVAL_NEAR_DUPLICATE_PHOTO
    for copy in copies:
        decoded = images.open_image(encoded(copy, "JPEG", quality=50))
        distance = images.thumbnail_distance(signature, images.thumbnail_signature(decoded))
        assert 0 <= distance <= limit, distance
    moved = smooth_photo((30, 90, 160), (20, 150, 220, 240))
    recoloured = smooth_photo((160, 40, 30), (40, 60, 200, 280))
    for other in (moved, recoloured):
        distance = images.thumbnail_distance(signature, images.thumbnail_signature(other))
        assert distance > 3 * limit, distance
    assert images.thumbnail_distance(signature, signature) == pytest.approx(0, abs=1e-9)
    flat = images.thumbnail_signature(Image.new("RGB", (60, 80), (250, 250, 250)))
    assert images.thumbnail_distance(flat, flat) == 1.0  # nothing to correlate: never flagged


# --------------------------------------------------------------------------- exact: API


def test_api_refuses_the_same_pixels_under_another_name_and_format(staff, category, media_root):
    photo = studio_photo()
    first = post_garment(
        staff, sku="A1", data=encoded(photo, "PNG"), name="a.png", category=category
    )
    assert first.status_code == 201, first.content
    again = post_garment(
        staff, sku="A2", data=encoded(photo, "BMP"), name="other-name.bmp", category=category
    )
    assert again.status_code == 409
    error = again.json()["error"]
    assert error["code"] == "duplicate_image"
    assert error["duplicate_of"] == first.json()["id"]
    assert "A1" in error["message"]
    assert not Garment.objects.filter(sku="A2").exists()


def test_api_saves_a_duplicate_when_allowed(staff, category, media_root):
    photo = studio_photo()
    first = post_garment(
        staff, sku="B1", data=encoded(photo, "PNG"), name="b.png", category=category
    )
    assert first.status_code == 201
    again = post_garment(
        staff,
        sku="B2",
        data=encoded(photo, "PNG"),
        name="b.png",
        category=category,
        allow_duplicate="true",
    )
    assert again.status_code == 201, again.content
    a, b = Garment.objects.get(sku="B1"), Garment.objects.get(sku="B2")
    assert a.pixel_hash == b.pixel_hash != ""


def test_api_lets_a_garment_keep_its_own_photo_and_refuses_another_garments(
    staff, category, media_root
):
    one, two = studio_photo((10, 120, 40)), studio_photo((160, 20, 90))
    a = post_garment(staff, sku="C1", data=encoded(one, "PNG"), name="1.png", category=category)
    b = post_garment(staff, sku="C2", data=encoded(two, "PNG"), name="2.png", category=category)
    same = SimpleUploadedFile("again.png", encoded(one, "PNG"))
    own = staff.patch(f"{GARMENTS}{a.json()['id']}/", {"image": same}, format="multipart")
    assert own.status_code == 200, own.content
    taken = SimpleUploadedFile("taken.png", encoded(one, "PNG"))
    refused = staff.patch(f"{GARMENTS}{b.json()['id']}/", {"image": taken}, format="multipart")
    assert refused.status_code == 409
    assert refused.json()["error"]["duplicate_of"] == a.json()["id"]


# --------------------------------------------------------------------------- exact: admin


def test_admin_form_names_the_other_garment_with_a_link(client, staff_user, category, media_root):
    client.force_login(staff_user)
    photo = studio_photo()
    original = Garment(sku="D1", title="Original", category=category)
    original.image = SimpleUploadedFile("d1.png", encoded(photo, "PNG"))
    catalogue.save_garment(garment=original, image_changed=True)
    form = {
        "sku": "D2",
        "title": "Copy",
        "description": "",
        "category": category.pk,
        "colour": "",
        "attributes": "{}",
    }
    refused = client.post(
        "/admin/retrieval/garment/add/",
        {**form, "image": SimpleUploadedFile("copy.bmp", encoded(photo, "BMP"))},
    )
    assert refused.status_code == 400
    html = refused.content.decode()
    assert "Another garment already has this photo" in html
    assert f'href="/admin/retrieval/garment/{original.pk}/change/"' in html
    assert not Garment.objects.filter(sku="D2").exists()
    allowed = client.post(
        "/admin/retrieval/garment/add/",
        {
            **form,
            "image": SimpleUploadedFile("copy.bmp", encoded(photo, "BMP")),
            "allow_duplicate": "on",
        },
    )
    assert allowed.status_code == 302
    assert Garment.objects.get(sku="D2").pixel_hash == original.pixel_hash


# --------------------------------------------------------------------------- exact: import


def test_import_skips_and_reports_rows_duplicating_a_garment(tmp_path, category, media_root):
    photo, other = studio_photo(), studio_photo((200, 160, 20))
    existing = Garment(sku="E0", title="Already here", category=category)
    existing.image = SimpleUploadedFile("e0.png", encoded(photo, "PNG"))
    catalogue.save_garment(garment=existing, image_changed=True)
    rows = (
        "11,11.jpg,Men,Apparel,Topwear,Shirts,Blue,Summer,2012,Casual,Copy of E0\n"
        "12,12.jpg,Men,Apparel,Topwear,Shirts,Blue,Summer,2012,Casual,New one\n"
        "13,13.jpg,Men,Apparel,Topwear,Shirts,Blue,Summer,2012,Casual,Repeat of 12\n"
    )
    path = tmp_path / "c.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("styles.csv", HEADER + rows)
        zf.writestr("images/11.jpg", encoded(photo, "PNG"))  # named .jpg, a PNG: same pixels
        zf.writestr("images/12.jpg", encoded(other, "PNG"))
        zf.writestr("images/13.jpg", encoded(other, "BMP"))
    job = catalogue.import_catalog(source=path)
    assert job.status == ImportJob.Status.DONE
    assert job.created == 1
    assert set(Garment.objects.values_list("sku", flat=True)) == {"E0", "12"}
    reported = {p["sku"]: p for p in job.problems if p.get("code") == "duplicate_image"}
    assert reported["11"]["duplicate_of"] == existing.pk
    assert reported["11"]["duplicate_sku"] == "E0"
    assert reported["13"]["duplicate_of"] == Garment.objects.get(sku="12").pk
    assert "skipped" in reported["11"]["reason"]
    # Re-importing changes nothing and reports the same rows again.
    again = catalogue.import_catalog(source=path)
    assert again.created == 0
    assert {p["sku"] for p in again.problems if p.get("code") == "duplicate_image"} == {"11", "13"}


# --------------------------------------------------------------------------- near duplicates


def forget_fingerprints(*garments: Garment) -> None:
    """The state migration 0011 leaves garments stored before it in."""
    Garment.objects.filter(pk__in=[g.pk for g in garments]).update(
        pixel_hash="", phash=None, thumbnail=None
    )


def test_photos_stored_before_duplicate_detection_are_fingerprinted_from_their_file(
    staff, category, media_root
):
    made = []
    for sku, colour in (("F1", (200, 40, 40)), ("F2", (40, 160, 60)), ("F3", (30, 60, 200))):
        response = post_garment(
            staff,
            sku=sku,
            data=encoded(studio_photo(colour), "PNG"),
            name=f"{sku}.png",
            category=category,
        )
        assert response.status_code == 201, response.content
        made.append(Garment.objects.get(pk=response.json()["id"]))
    first, second, broken = made
    forget_fingerprints(*made)
    (media_root / broken.image.name).write_bytes(b"not a photo any more")

    report = catalogue.fingerprint_stored_photos(batch_size=2)

    assert report.fingerprinted == 2 and report.unreadable == [broken.pk]
    assert report.flagged == 0  # not indexed: no vectors to look near
    for garment in (first, second):
        garment.refresh_from_db()
        with garment.image.open("rb") as fh:
            stored = images.open_image(fh.read())
        assert garment.pixel_hash == images.pixel_digest(stored)
        assert garment.phash is not None and garment.thumbnail is not None
        assert bytes(garment.phash) == images.perceptual_hash(stored)
        assert bytes(garment.thumbnail) == images.thumbnail_signature(stored)
    broken.refresh_from_db()
    assert broken.pixel_hash == "" and broken.phash is None
    # Idempotent: only the unreadable one is tried again.
    again = catalogue.fingerprint_stored_photos()
    assert again.fingerprinted == 0 and again.unreadable == [broken.pk]
    # The photo the shop serves, uploaded again, is now refused as the same pixels.
    with first.image.open("rb") as fh:
        served = fh.read()
    refused = post_garment(staff, sku="F4", data=served, name="saved.jpg", category=category)
    assert refused.status_code == 409
    assert refused.json()["error"]["duplicate_of"] == first.pk


@pytest.fixture
def source_garment(trained_catalogue) -> Garment:
    garment = (
        Garment.objects.filter(pk__in=trained_catalogue.ids[Garment], category__slug="tshirts")
        .order_by("sku")
        .first()
    )
    assert garment is not None
    return garment


def listed_garments(client: APIClient, *, category: Category) -> list[dict]:
    """Every garment of the category as the API's list shows it (all its pages)."""
    listed: list[dict] = []
    url: str | None = f"{GARMENTS}?category={category.slug}&page_size=100"
    while url:
        body = client.get(url).json()
        listed += body["results"]
        url = body.get("next")
    return listed


def near_copy(garment: Garment, change: str) -> bytes:
    with garment.image.open("rb") as fh:
        photo = images.open_image(fh.read())
    if change == "resized":  # shrunk to 70%, as a feed's thumbnail would be
        photo = photo.resize((round(photo.width * 0.7), round(photo.height * 0.7)))
        return encoded(photo, "JPEG", quality=70)
    if change == "enlarged":
        photo = photo.resize((photo.width * 2, photo.height * 2))
        return encoded(photo, "JPEG", quality=70)
    if change == "brightened":
        return encoded(ImageEnhance.Brightness(photo).enhance(1.1), "JPEG", quality=90)
    return encoded(photo, "JPEG", quality=40)  # recompressed


def add_and_index(staff, garment: Garment, data: bytes, sku: str) -> Garment:
    response = post_garment(staff, sku=sku, data=data, name="copy.jpg", category=garment.category)
    assert response.status_code == 201, response.content
    created = Garment.objects.get(pk=response.json()["id"])
    result = indexing.index_garments(garment_ids=[created.pk])
    assert result.ready == [created.pk]
    return created


@pytest.mark.slow
@pytest.mark.parametrize("change", ["resized", "enlarged", "recompressed", "brightened"])
def test_a_near_copy_is_saved_and_flagged_as_a_possible_duplicate(staff, source_garment, change):
    copy = add_and_index(staff, source_garment, near_copy(source_garment, change), f"N-{change}")
    flag = NearDuplicate.objects.get(garment=copy)
    assert flag.original_id == source_garment.pk
    assert flag.status == NearDuplicate.Status.OPEN
    assert near.is_near_duplicate(
        phash_bits=flag.phash_distance, photo_distance=flag.photo_distance
    )
    # Staff see the flag through the API; shoppers do not.
    body = staff.get(f"{GARMENTS}{copy.pk}/").json()
    assert body["possible_duplicate_of"] == [source_garment.pk]
    by_id = {g["id"]: g for g in listed_garments(staff, category=source_garment.category)}
    assert by_id[source_garment.pk]["possible_duplicate_of"] == [copy.pk]
    shopper = APIClient().get(f"{GARMENTS}{source_garment.pk}/").json()
    assert "possible_duplicate_of" not in shopper and "same_product_as" not in shopper


@pytest.mark.slow
def test_fingerprinting_old_photos_flags_their_near_copies(staff, source_garment):
    copy = add_and_index(staff, source_garment, near_copy(source_garment, "resized"), "N-old")
    NearDuplicate.objects.filter(garment=copy).delete()
    forget_fingerprints(source_garment, copy)

    report = catalogue.fingerprint_stored_photos()

    assert report.fingerprinted == 2 and report.unreadable == []
    assert report.flagged >= 1
    flag = NearDuplicate.objects.get(garment=copy)
    assert flag.original_id == source_garment.pk
    assert flag.status == NearDuplicate.Status.OPEN


@pytest.mark.slow
def test_distinct_garments_of_the_catalogue_are_not_flagged(trained_catalogue):
    """Indexing the whole 300-garment catalogue again flags none of its distinct garments."""
    ids = trained_catalogue.ids[Garment]
    model = search.require_active_model()
    near.flag_near_duplicates(garment_ids=ids, model=model)
    flags = list(NearDuplicate.objects.filter(garment_id__in=ids, original_id__in=ids))

    # The sample catalogue holds a few identical photos under two ids (re-encoded, so not
    # exact duplicates); any flag must be such a pair: the same size and full-size pixels
    # within a few levels on average (a test that is not the flag's own signal).
    def pixels(garment_id: int) -> np.ndarray:
        with Garment.objects.get(pk=garment_id).image.open("rb") as fh:
            return np.asarray(images.open_image(fh.read()), dtype=np.int16)

    def same_photo(a: np.ndarray, b: np.ndarray) -> bool:
        return a.shape == b.shape and float(np.abs(a - b).mean()) <= 4

    distinct = [
        (f.garment_id, f.original_id, f.photo_distance, f.fused_distance)
        for f in flags
        if not same_photo(pixels(f.garment_id), pixels(f.original_id))
    ]
    assert distinct == []


@pytest.mark.slow
def test_review_same_product_merges_and_search_shows_one(
    client, staff, staff_user, source_garment, settings
):
    # The catalogue photo searched as it is (no centre crop): the copy then ranks beside it.
    settings.RETRIEVAL_QUERY_CROP = "off"
    copy = add_and_index(staff, source_garment, near_copy(source_garment, "recompressed"), "N-m")
    flag = NearDuplicate.objects.get(garment=copy)
    client.force_login(staff_user)
    listed = client.get("/admin/retrieval/garment/?duplicate=open")
    assert copy.sku in listed.content.decode() and source_garment.sku in listed.content.decode()
    change = client.get(f"/admin/retrieval/garment/{copy.pk}/change/").content.decode()
    assert f"/admin/retrieval/nearduplicate/{flag.pk}/review/" in change
    page = client.get(f"/admin/retrieval/nearduplicate/{flag.pk}/review/")
    assert page.status_code == 200
    html = page.content.decode()
    assert copy.image.url in html and source_garment.image.url in html
    with source_garment.image.open("rb") as fh:
        query = images.open_image(fh.read())
    # A page deep enough to hold the copy (a re-compressed copy is not always in the top 10
    # of 300 look-alike studio shots).
    before = [h.garment_id for h in search.search_image(image=query, top=50, mode="exact").hits]
    assert source_garment.pk in before and copy.pk in before
    done = client.post(f"/admin/retrieval/nearduplicate/{flag.pk}/review/", {"decision": "same"})
    assert done.status_code == 302
    flag.refresh_from_db()
    assert flag.status == NearDuplicate.Status.SAME and flag.reviewed_by == staff_user
    copy.refresh_from_db()
    source_garment.refresh_from_db()
    assert copy.product_group == source_garment.product_group == source_garment.pk
    for mode in ("fused", "deep", "exact"):
        after = [h.garment_id for h in search.search_image(image=query, top=50, mode=mode).hits]
        assert len(after) == 50
        assert after[0] == source_garment.pk  # the best-scored of the two stays
        assert copy.pk not in after
    similar = search.more_like_this(garment=copy, top=10).hits
    assert source_garment.pk not in [h.garment_id for h in similar] or copy.pk not in [
        h.garment_id for h in similar
    ]
    api = staff.get(f"{GARMENTS}{copy.pk}/").json()
    assert api["same_product_as"] == source_garment.pk and api["possible_duplicate_of"] == []


@pytest.mark.slow
def test_review_different_products_closes_the_flag_for_good(
    client, staff, staff_user, source_garment, settings
):
    settings.RETRIEVAL_QUERY_CROP = "off"  # the copy's photo searched as it is
    copy = add_and_index(staff, source_garment, near_copy(source_garment, "resized"), "N-d")
    flag = NearDuplicate.objects.get(garment=copy)
    client.force_login(staff_user)
    client.post(f"/admin/retrieval/nearduplicate/{flag.pk}/review/", {"decision": "different"})
    flag.refresh_from_db()
    assert flag.status == NearDuplicate.Status.DIFFERENT
    indexing.mark_for_reindex(garment_ids=[copy.pk])
    indexing.index_garments(garment_ids=[copy.pk])
    assert NearDuplicate.objects.filter(garment=copy).count() == 1
    assert staff.get(f"{GARMENTS}{copy.pk}/").json()["possible_duplicate_of"] == []
    query = near_copy(copy, "x")
    hits = [h.garment_id for h in search.search_image(image=query, top=50, mode="exact").hits]
    assert copy.pk in hits and source_garment.pk in hits  # different products: both listed


def test_a_view_only_user_may_look_at_a_pair_but_not_decide(
    client, django_user_model, category, media_root
):
    from django.contrib.auth.models import Permission

    a = Garment.objects.create(sku="V1", title="a", category=category, image="garments/a.jpg")
    b = Garment.objects.create(sku="V2", title="b", category=category, image="garments/b.jpg")
    flag = NearDuplicate.objects.create(
        garment=b, original=a, phash_distance=2, fused_distance=0.1, photo_distance=0.003
    )
    viewer = django_user_model.objects.create_user("viewer", password="pw", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_nearduplicate"))
    client.force_login(viewer)
    page = client.get(f"/admin/retrieval/nearduplicate/{flag.pk}/review/")
    assert page.status_code == 200
    assert "Same product: merge" not in page.content.decode()
    refused = client.post(f"/admin/retrieval/nearduplicate/{flag.pk}/review/", {"decision": "same"})
    assert refused.status_code == 403
    flag.refresh_from_db()
    assert flag.status == NearDuplicate.Status.OPEN
    a.refresh_from_db()
    assert a.product_group is None
