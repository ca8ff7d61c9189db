"""Example photos (issue #14): the import of labelled shoppers' photos, the split by sender,
idempotent re-imports, bad rows reported and skipped, the command and the admin's import."""

from __future__ import annotations

import io
from collections import defaultdict

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.test import Client

from retrieval import catalogue
from retrieval.models import Category, ExamplePhoto
from tests.catalogue_zips import example_row, make_examples, png_bomb
from tests.conftest import SAMPLE_ZIP
from tests.factories import CategoryFactory, jpeg_bytes

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _media(media_root):
    return media_root


def _many_senders(tmp_path, *, senders: int = 40, per_sender: int = 3, reverse: bool = False):
    """A zip of senders x photos (Tshirts and Shirts), rows optionally in reverse order."""
    lines, images = [], {}
    for s in range(senders):
        for p in range(per_sender):
            key = f"s{s:03d}{p}"
            lines.append(example_row(key, "Tshirts" if p % 2 else "Shirts", sender=str(s)))
            images[f"{key}.jpg"] = jpeg_bytes((10 * s % 255, 40, 90))
    if reverse:
        lines.reverse()
    name = "reversed.zip" if reverse else "examples.zip"
    return make_examples(tmp_path / name, "".join(lines), images)


def _roles_by_sender() -> dict[str, set[str]]:
    roles: dict[str, set[str]] = defaultdict(set)
    for sender, role in ExamplePhoto.objects.values_list("sender", "role"):
        roles[sender].add(role)
    return roles


def test_split_is_by_sender_and_stable_across_reimports(tmp_path):
    CategoryFactory(name="Tshirts")
    CategoryFactory(name="Shirts")
    source = _many_senders(tmp_path)

    report = catalogue.import_example_photos(source=source, holdout=0.25)

    assert report.created == 120 and report.already_present == 0 and not report.problems
    roles = _roles_by_sender()
    assert all(len(sides) == 1 for sides in roles.values()), "a sender on both sides"
    held = [s for s, sides in roles.items() if sides == {ExamplePhoto.Role.HOLDOUT}]
    assert 0 < len(held) < 40  # about a quarter of the senders, by hash
    assert report.roles == {"holdout": 3 * len(held), "train": 120 - 3 * len(held)}
    before = dict(ExamplePhoto.objects.values_list("key", "role"))

    again = catalogue.import_example_photos(source=source, holdout=0.25)
    assert again.created == 0 and again.already_present == 120
    assert dict(ExamplePhoto.objects.values_list("key", "role")) == before

    # Another import order, from scratch: the same sides (the hash, not the order, decides).
    ExamplePhoto.objects.all().delete()
    catalogue.import_example_photos(source=_many_senders(tmp_path, reverse=True), holdout=0.25)
    assert dict(ExamplePhoto.objects.values_list("key", "role")) == before


def test_holdout_zero_trains_on_every_photo_and_no_sender_splits_by_key(tmp_path):
    assert {catalogue.example_role(sender="", key=f"k{i}", holdout=0.5) for i in range(50)} == {
        ExamplePhoto.Role.TRAIN,
        ExamplePhoto.Role.HOLDOUT,
    }
    assert {catalogue.example_role(sender=str(i), key="k", holdout=0.0) for i in range(50)} == {
        ExamplePhoto.Role.TRAIN
    }
    assert catalogue.example_role(sender="7", key="a", holdout=0.3) == catalogue.example_role(
        sender="7", key="b", holdout=0.3
    )


def test_bad_rows_are_reported_and_skipped_never_a_failed_run(tmp_path, settings):
    CategoryFactory(name="Tshirts")
    good = jpeg_bytes((20, 40, 200))
    rows = (
        example_row("e1", "tshirts", sender="a")  # category matched case-insensitively
        + example_row("e2", "Tshirts", sender="a")  # not an image
        + example_row("e3", "Tshirts", sender="b")  # truncated JPEG
        + example_row("e4", "Tshirts", sender="b")  # decompression bomb
        + example_row("e5", "Tshirts", sender="c")  # image missing from the zip
        + example_row("e6", "Sarees", sender="c")  # a category the catalogue lacks
        + example_row("e7", "Tshirts", sender="c", image="../../etc/passwd")  # traversal
    )
    images = {
        "e1.jpg": good,
        "e2.jpg": b"<html>not an image</html>",
        "e3.jpg": good[: len(good) // 2],
        "e4.jpg": png_bomb(),
        "e6.jpg": good,
    }
    report = catalogue.import_example_photos(
        source=make_examples(tmp_path / "bad.zip", rows, images), holdout=0.0
    )

    assert report.created == 1
    assert list(ExamplePhoto.objects.values_list("key", "category__name")) == [("e1", "Tshirts")]
    reasons = {p.sku: p.reason for p in report.problems}
    assert set(reasons) == {"e2", "e3", "e4", "e5", "e6", "e7"}
    assert "Sarees" in reasons["e6"] and "not in the catalogue" in reasons["e6"]
    assert reasons["e5"] == "image file missing"
    # The stored file is a re-encoded JPEG under examples/, never the upload's name.
    stored = ExamplePhoto.objects.get().image.name or ""
    assert stored.startswith("examples/") and stored.endswith(".jpg") and "e1" not in stored


def test_command_prints_the_report(tmp_path):
    CategoryFactory(name="Tshirts")
    source = make_examples(
        tmp_path / "one.zip",
        example_row("x1", sender="1") + example_row("x2", "Kurtas", sender="1"),
        {"x1.jpg": jpeg_bytes(), "x2.jpg": jpeg_bytes()},
    )
    out, err = io.StringIO(), io.StringIO()
    call_command("import_examples", str(source), "--holdout", "0", stdout=out, stderr=err)
    assert "1 new, 0 already present, 1 problems; by role: 1 train" in out.getvalue()
    assert "Kurtas" in err.getvalue()


# --------------------------------------------------------------------------- admin


@pytest.fixture
def curator(django_user_model, client, fast_password_hashing):
    from django.contrib.auth.models import Permission

    user = django_user_model.objects.create_user("curator", password="pw", is_staff=True)
    user.user_permissions.add(
        *Permission.objects.filter(
            content_type__app_label="retrieval", content_type__model="examplephoto"
        )
    )
    client.force_login(user)
    return client


@pytest.fixture
def viewer(django_user_model, client, fast_password_hashing):
    from django.contrib.auth.models import Permission

    user = django_user_model.objects.create_user("viewer", password="pw", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_examplephoto"))
    client.force_login(user)
    return client


def _zip_upload(tmp_path) -> SimpleUploadedFile:
    source = make_examples(
        tmp_path / "up.zip",
        example_row("u1", sender="1") + example_row("u2", "Nope", sender="2"),
        {"u1.jpg": jpeg_bytes(), "u2.jpg": jpeg_bytes()},
    )
    return SimpleUploadedFile("up.zip", source.read_bytes(), content_type="application/zip")


def test_admin_import_page_imports_for_a_curator(curator, tmp_path):
    CategoryFactory(name="Tshirts")
    listing = curator.get("/admin/retrieval/examplephoto/").content.decode()
    assert 'id="import-examples"' in listing
    page = curator.get("/admin/retrieval/examplephoto/import/")
    assert page.status_code == 200
    response = curator.post(
        "/admin/retrieval/examplephoto/import/",
        {"upload": _zip_upload(tmp_path), "holdout": "0"},
    )
    assert response.status_code == 200
    html = response.content.decode()
    assert 'id="example-import-report"' in html and "Nope" in html
    assert list(ExamplePhoto.objects.values_list("key", "role")) == [("u1", "train")]
    # The photo shows in the admin (staff only), never as public media.
    photo = ExamplePhoto.objects.get()
    listing = curator.get("/admin/retrieval/examplephoto/").content.decode()
    image_url = f"/admin/retrieval/examplephoto/{photo.pk}/image/"
    assert image_url in listing and photo.image.url not in listing
    image = curator.get(image_url)
    assert image.status_code == 200 and image["Content-Type"] == "image/jpeg"
    assert b"".join(image.streaming_content)[:2] == b"\xff\xd8"
    assert Client().get(image_url).status_code == 302  # to the admin's login
    assert Client().get(photo.image.url).status_code == 404
    not_zip = curator.post(
        "/admin/retrieval/examplephoto/import/",
        {"upload": SimpleUploadedFile("x.zip", b"not a zip"), "holdout": "0"},
    )
    assert not_zip.status_code == 400 and ExamplePhoto.objects.count() == 1


def test_admin_import_is_refused_without_the_add_permission(viewer, tmp_path):
    CategoryFactory(name="Tshirts")
    listing = viewer.get("/admin/retrieval/examplephoto/")
    assert listing.status_code == 200 and 'id="import-examples"' not in listing.content.decode()
    assert viewer.get("/admin/retrieval/examplephoto/import/").status_code == 403
    response = viewer.post(
        "/admin/retrieval/examplephoto/import/",
        {"upload": _zip_upload(tmp_path), "holdout": "0"},
    )
    assert response.status_code == 403 and not ExamplePhoto.objects.exists()


def test_admin_add_form_stores_a_reencoded_photo_with_its_role(curator, settings):
    settings.RETRIEVAL_EXAMPLE_HOLDOUT = 0.0
    category = Category.objects.create(name="Tshirts")
    response = curator.post(
        "/admin/retrieval/examplephoto/add/",
        {
            "key": "one",
            "category": category.pk,
            "sender": "me",
            "image": SimpleUploadedFile("p.png", jpeg_bytes(), content_type="image/png"),
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    photo = ExamplePhoto.objects.get()
    assert photo.role == ExamplePhoto.Role.TRAIN
    name = photo.image.name or ""
    assert name.startswith("examples/") and name.endswith(".jpg")
    refused = curator.post(
        "/admin/retrieval/examplephoto/add/",
        {
            "key": "two",
            "category": category.pk,
            "image": SimpleUploadedFile("p.jpg", b"<html>", content_type="image/jpeg"),
        },
    )
    assert refused.status_code == 200 and ExamplePhoto.objects.count() == 1


def test_merging_categories_moves_their_example_photos(tmp_path):
    CategoryFactory(name="Tshirts")
    tees = Category.objects.create(name="Tees")
    catalogue.import_example_photos(
        source=make_examples(
            tmp_path / "m.zip", example_row("m1", "Tees", sender="a"), {"m1.jpg": jpeg_bytes()}
        ),
        holdout=0.0,
    )
    target = Category.objects.get(name="Tshirts")
    catalogue.merge_categories(sources=[tees], target=target)
    assert ExamplePhoto.objects.get().category == target
    assert not Category.objects.filter(name="Tees").exists()


SHOPPER_PHOTOS = SAMPLE_ZIP.parent / "shopper-photos.zip"


@pytest.mark.slow
def test_the_shared_shoppers_photos_import_split_by_sender():
    """The real file (989 photos, 129 senders): every row imports into the catalogue's seven
    categories, about a quarter of the senders are held out, none on both sides."""
    if not SHOPPER_PHOTOS.exists():
        pytest.skip(f"{SHOPPER_PHOTOS} not found")
    for name in ("Tshirts", "Shirts", "Dresses", "Shorts", "Skirts", "Sweatshirts", "Tops"):
        CategoryFactory(name=name)
    report = catalogue.import_example_photos(source=SHOPPER_PHOTOS, holdout=0.25)
    assert report.created == 989 and not report.problems
    roles = _roles_by_sender()
    assert len(roles) == 129 and all(len(sides) == 1 for sides in roles.values())
    held = sum(1 for sides in roles.values() if sides == {ExamplePhoto.Role.HOLDOUT})
    assert 0.15 * 129 < held < 0.35 * 129


@pytest.mark.django_db(transaction=True)
def test_deleting_an_example_photo_deletes_its_file(tmp_path, media_root):
    CategoryFactory(name="Tshirts")
    catalogue.import_example_photos(
        source=make_examples(tmp_path / "d.zip", example_row("d1"), {"d1.jpg": jpeg_bytes()}),
        holdout=0.0,
    )
    photo = ExamplePhoto.objects.get()
    stored = media_root / (photo.image.name or "missing")
    assert stored.exists()
    photo.delete()
    assert not stored.exists()
