"""What reaches media storage, and what media serves: every stored image is a JPEG the site
re-encoded itself (admin, API, imports), under a name of ours; media answers only those, with
nosniff, never a path out of MEDIA_ROOT; an unwritable media disk gives a clear error and
nothing half-saved (no row, no file, no task), and a database failure after the file was
written removes the file again. A replaced or deleted garment's file is deleted once that
commits (kept on a rollback, kept while another garment names it); prune_media removes older
orphans. Real PostgreSQL, real files; nothing mocked."""

from __future__ import annotations

import io
import logging
import os
import re
import time
import zipfile
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import CommandError, call_command
from django.db import DatabaseError, connection, transaction
from rest_framework.test import APIClient

from retrieval import catalogue
from retrieval.jobs import tasks
from retrieval.models import Garment, ImportJob
from retrieval.tokens import issue_token
from tests.factories import CategoryFactory, GarmentFactory, grant_catalogue_permissions, jpeg_bytes
from tests.images_corpus import SCRIPT, assert_clean_jpeg, catalogue_zip, jpeg_with_script

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fast_password_hashing")]

GARMENTS = "/api/v1/garments/"
OURS = re.compile(r"garments/\d{4}/\d{2}/[0-9a-f]{32}\.jpg")  # the only names we store
STORAGE_MESSAGE = "the media storage is not writable"


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.fixture
def staff_api(django_user_model) -> APIClient:
    user = django_user_model.objects.create_user("media-staff", password="pw-x", is_staff=True)
    grant_catalogue_permissions(user)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {issue_token(user=user).key}")
    return client


def upload(data: bytes, name: str = "photo.jpg", content_type: str = "image/jpeg"):
    return SimpleUploadedFile(name, data, content_type=content_type)


def admin_add(client, *, sku: str, image, category=None):
    category = category or CategoryFactory(name="Media Tees")
    data = {"sku": sku, "title": "Tee", "description": "", "category": category.pk}
    data.update(colour="Red", attributes="{}", image=image)
    return client.post("/admin/retrieval/garment/add/", data)


def stored_bytes(garment: Garment) -> bytes:
    with garment.image.open("rb") as handle:
        return handle.read()


def served(client, garment: Garment):
    response = client.get(garment.image.url)
    assert response.status_code == 200, garment.image.url
    return response, b"".join(response.streaming_content)


# --------------------------------------------------------------------------- re-encoding


def test_admin_upload_is_stored_and_served_as_a_fresh_jpeg(admin_client, media_root, client):
    """A JPEG with script in its comment and an HTML page appended: accepted (it is a photo),
    but what is stored and served is a new JPEG of its pixels, under a name of ours."""
    response = admin_add(admin_client, sku="M1", image=upload(jpeg_with_script(), "tee.html"))
    assert response.status_code == 302, response.content[:2000]
    garment = Garment.objects.get(sku="M1")
    assert OURS.fullmatch(garment.image.name) and "tee" not in garment.image.name
    assert_clean_jpeg(stored_bytes(garment), colour=(200, 30, 30))
    response, body = served(client, garment)
    assert body == stored_bytes(garment)
    assert_clean_jpeg(body)
    assert response["Content-Type"] == "image/jpeg"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert "sandbox" in response["Content-Security-Policy"]
    assert files_under(media_root) == [garment.image.name]


def test_api_create_and_update_store_fresh_jpegs(staff_api, media_root, client):
    category = CategoryFactory(name="Media Coats")
    data = {"sku": "M2", "title": "Coat", "category": category.slug}
    response = staff_api.post(
        GARMENTS, {**data, "image": upload(jpeg_with_script(), "coat.svg")}, format="multipart"
    )
    assert response.status_code == 201, response.content
    garment = Garment.objects.get(sku="M2")
    first = garment.image.name
    assert OURS.fullmatch(first)
    assert response.json()["image_url"] == f"http://testserver/media/{first}"
    assert_clean_jpeg(served(client, garment)[1], colour=(200, 30, 30))

    replacement = upload(jpeg_bytes((20, 20, 200), size=(60, 80)), "blue.jpeg")
    response = staff_api.patch(
        f"{GARMENTS}{garment.pk}/", {"image": replacement}, format="multipart"
    )
    assert response.status_code == 200, response.content
    garment.refresh_from_db()
    assert OURS.fullmatch(garment.image.name) and garment.image.name != first
    assert_clean_jpeg(served(client, garment)[1])


def test_import_stores_fresh_jpegs_and_a_reimport_changes_nothing(media_root, tmp_path):
    images = {"900": jpeg_with_script(), "901": jpeg_bytes((10, 200, 10))}
    rows = [("900", "Tshirts", "Tee 900"), ("901", "Tshirts", "Tee 901")]
    source = catalogue_zip(tmp_path / "c.zip", rows, images)
    job = catalogue.import_catalog(source=source)
    assert (job.status, job.created, job.problems) == (ImportJob.Status.DONE, 2, [])
    stored = dict(Garment.objects.values_list("sku", "image"))
    assert all(OURS.fullmatch(name) for name in stored.values())
    for garment in Garment.objects.all():
        assert_clean_jpeg(stored_bytes(garment))
        # The catalogue's own bytes decide whether a re-import changed the image.
        assert garment.attributes["image_sha256"] == catalogue.image_digest(images[garment.sku])
    before = files_under(media_root)
    again = catalogue.import_catalog(source=source)
    assert (again.created, again.updated, again.unchanged) == (0, 0, 2)
    assert dict(Garment.objects.values_list("sku", "image")) == stored
    assert files_under(media_root) == before


def test_import_refuses_rows_whose_image_is_not_a_photo(media_root, tmp_path):
    images = {"910": b"<html>" + SCRIPT, "911": jpeg_bytes()}
    rows = [("910", "Tshirts", "Bad"), ("911", "Tshirts", "Good")]
    job = catalogue.import_catalog(source=catalogue_zip(tmp_path / "c.zip", rows, images))
    assert job.status == ImportJob.Status.DONE and job.created == 1
    [problem] = job.problems
    assert problem["sku"] == "910" and "not an image" in problem["reason"]
    assert list(Garment.objects.values_list("sku", flat=True)) == ["911"]
    assert len(files_under(media_root)) == 1


# --------------------------------------------------------------------------- serving


def test_media_serves_only_our_jpegs_and_never_leaves_media_root(client, media_root):
    garment = GarmentFactory()
    assert client.get(garment.image.url).status_code == 200
    outside = media_root.parent / "secret.jpg"
    outside.write_bytes(b"SECRET " + jpeg_bytes())
    for name, data in {
        "imports/2026/01/catalogue.zip": b"PK\x03\x04 staff upload",
        "garments/2026/01/page.html": b"<html>" + SCRIPT,
        "garments/2026/01/logo.svg": b"<svg>" + SCRIPT,
    }.items():
        (media_root / name).parent.mkdir(parents=True, exist_ok=True)
        (media_root / name).write_bytes(data)
    for url in (
        "/media/../secret.jpg",
        "/media/garments/../../secret.jpg",
        "/media/%2e%2e/secret.jpg",
        "/media/garments/%2e%2e/%2E%2E/secret.jpg",
        "/media/garments/..%2f..%2fsecret.jpg",
        f"/media/{media_root.parent}/secret.jpg",
        "/media//etc/passwd",
        "/media/imports/2026/01/catalogue.zip",
        "/media/garments/2026/01/page.html",
        "/media/garments/2026/01/logo.svg",
        "/media/garments/2026/01/",
        "/media/garments/2026/01/missing.jpg",
    ):
        response = client.get(url)
        assert response.status_code in (400, 404), url
        body = b"".join(response.streaming_content) if response.streaming else response.content
        assert b"SECRET" not in body and b"<script" not in body and b"PK" not in body[:2], url
    assert client.post(garment.image.url).status_code == 405


# --------------------------------------------------------------------------- storage faults


@pytest.fixture
def unwritable_media(settings, tmp_path) -> Path:
    """A media disk that refuses every write for real: MEDIA_ROOT's parent is a regular file
    (tests run as root, so permission bits would not stop anything). Afterwards, the test's
    temporary folder must hold nothing but that file: no image was left anywhere."""
    blocker = tmp_path / "media-disk"
    blocker.write_text("a file, where the media disk should be mounted")
    settings.MEDIA_ROOT = blocker / "media"
    yield blocker
    assert [p.name for p in tmp_path.iterdir()] == ["media-disk"]


@pytest.mark.faults
def test_admin_upload_to_an_unwritable_disk_explains_and_saves_nothing(
    admin_client, unwritable_media, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks() as callbacks:
        response = admin_add(admin_client, sku="F1", image=upload(jpeg_bytes()))
    assert response.status_code == 400
    html = response.content.decode()
    assert STORAGE_MESSAGE in html and "Nothing was saved" in html
    assert 'name="sku"' in html and 'value="F1"' in html  # the posted form, shown again
    assert not Garment.objects.filter(sku="F1").exists()
    assert callbacks == []  # nothing queued for indexing


@pytest.mark.faults
def test_admin_image_change_to_an_unwritable_disk_keeps_the_garment_as_it_was(
    admin_client, settings, tmp_path, django_capture_on_commit_callbacks
):
    settings.MEDIA_ROOT = tmp_path / "media"
    garment = GarmentFactory(title="Kept")
    before = (garment.image.name, garment.status, garment.title)
    (tmp_path / "disk").write_text("not a directory")
    settings.MEDIA_ROOT = tmp_path / "disk" / "media"
    data = {"sku": garment.sku, "title": "Changed", "description": "", "colour": "Red"}
    data.update(category=garment.category_id, attributes="{}", image=upload(jpeg_bytes()))
    with django_capture_on_commit_callbacks() as callbacks:
        response = admin_client.post(f"/admin/retrieval/garment/{garment.pk}/change/", data)
    assert response.status_code == 400
    assert STORAGE_MESSAGE in response.content.decode()
    garment.refresh_from_db()
    assert (garment.image.name, garment.status, garment.title) == before
    assert callbacks == []


@pytest.mark.faults
def test_api_create_on_an_unwritable_disk_is_503_and_saves_nothing(
    staff_api, unwritable_media, django_capture_on_commit_callbacks
):
    category = CategoryFactory(name="Media Faults")
    data = {"sku": "F2", "title": "Tee", "category": category.pk, "image": upload(jpeg_bytes())}
    with django_capture_on_commit_callbacks() as callbacks:
        response = staff_api.post(GARMENTS, data, format="multipart")
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "storage_unavailable"
    assert STORAGE_MESSAGE in error["message"] and "Nothing was saved" in error["message"]
    assert str(unwritable_media) not in error["message"]  # no server paths to clients
    assert not Garment.objects.filter(sku="F2").exists()
    assert callbacks == []


@pytest.mark.faults
def test_import_on_an_unwritable_disk_fails_the_job_clearly(unwritable_media, tmp_path):
    rows = [("920", "Tshirts", "Tee"), ("921", "Tshirts", "Tee")]
    source = catalogue_zip(tmp_path / "c.zip", rows, {"920": jpeg_bytes(), "921": jpeg_bytes()})
    try:
        job = catalogue.import_catalog(source=source)
    finally:
        source.unlink()  # the fixture checks that nothing else is left in tmp_path
    assert job.status == ImportJob.Status.FAILED
    assert STORAGE_MESSAGE in job.error
    assert job.created == 0 and not Garment.objects.exists()


@pytest.mark.faults
def test_an_import_upload_to_an_unwritable_disk_explains_and_saves_nothing(
    admin_client, unwritable_media, django_capture_on_commit_callbacks
):
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("styles.csv", "id,articleType\n")
    upload = SimpleUploadedFile("c.zip", archive.getvalue(), content_type="application/zip")
    with django_capture_on_commit_callbacks() as callbacks:
        response = admin_client.post(
            "/admin/retrieval/importjob/add/", {"upload": upload, "category_field": "articleType"}
        )
    assert response.status_code == 400
    assert STORAGE_MESSAGE in response.content.decode()
    assert not ImportJob.objects.exists() and callbacks == []  # no job, no import queued


@pytest.fixture
def refuse_sku_boom():
    """A real database failure after the image is stored: a trigger refusing one sku (rolled
    back with the test's transaction)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE FUNCTION test_refuse_boom() RETURNS trigger AS $$ BEGIN "
            "IF NEW.sku = 'BOOM' THEN RAISE EXCEPTION 'refused by the test trigger'; END IF; "
            "RETURN NEW; END $$ LANGUAGE plpgsql"
        )
        cursor.execute(
            "CREATE TRIGGER test_refuse_boom BEFORE INSERT OR UPDATE ON retrieval_garment "
            "FOR EACH ROW EXECUTE FUNCTION test_refuse_boom()"
        )


@pytest.mark.faults
def test_a_database_failure_after_storing_removes_the_file(
    media_root, refuse_sku_boom, django_capture_on_commit_callbacks
):
    category = CategoryFactory(name="Media Boom")
    garment = Garment(sku="BOOM", title="x", category=category, image=upload(jpeg_bytes()))
    with django_capture_on_commit_callbacks() as callbacks, pytest.raises(DatabaseError):
        catalogue.save_garment(garment=garment, image_changed=True)
    assert files_under(media_root) == []
    assert not Garment.objects.filter(sku="BOOM").exists() and callbacks == []


@pytest.mark.faults
def test_a_database_failure_in_an_import_batch_removes_its_files(
    media_root, refuse_sku_boom, tmp_path
):
    rows = [("930", "Tshirts", "Tee"), ("BOOM", "Tshirts", "Tee")]
    images = {"930": jpeg_bytes(), "BOOM": jpeg_bytes((0, 90, 0))}
    # The batch's database error fails the job with the reason (issue #17: a job that dies is
    # marked failed, never left running); the files the batch stored are removed.
    job = catalogue.import_catalog(source=catalogue_zip(tmp_path / "c.zip", rows, images))
    assert job.status == ImportJob.Status.FAILED and "refused by the test trigger" in job.error
    assert files_under(media_root) == []
    assert not Garment.objects.exists()


def test_import_uploads_must_be_zips_and_are_stored_under_a_name_of_ours(
    admin_client, media_root, django_capture_on_commit_callbacks
):
    def post(name: str, data: bytes):
        upload = SimpleUploadedFile(name, data, content_type="application/zip")
        with django_capture_on_commit_callbacks():  # the import is queued after commit: not run
            return admin_client.post(
                "/admin/retrieval/importjob/add/",
                {"upload": upload, "category_field": "articleType"},
            )

    refused = post("catalogue.zip", b"<html>" + SCRIPT)
    assert refused.status_code == 400 and "not a zip archive" in refused.content.decode()
    assert not ImportJob.objects.exists() and files_under(media_root) == []

    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("styles.csv", "id,articleType\n")
    assert post("page.html", archive.getvalue()).status_code == 302
    job = ImportJob.objects.get()
    assert re.fullmatch(r"imports/\d{4}/\d{2}/[0-9a-f]{32}\.zip", job.upload.name)
    assert job.source == "page.html"  # the client's name is shown, never used for the file
    assert files_under(media_root) == [job.upload.name]
    assert admin_client.get(f"/media/{job.upload.name}").status_code == 404  # never served


# --------------------------------------------------------------------------- replaced, deleted


@pytest.fixture
def committed(django_capture_on_commit_callbacks):
    """Run what a commit of the test's work runs (its on_commit callbacks: the file deletions,
    and the indexing publish, whose messages are purged afterwards: no worker needs them)."""
    from fashionsite.celery import app

    yield lambda: django_capture_on_commit_callbacks(execute=True)
    app.control.purge()


def exists(media_root: Path, name: str) -> bool:
    return (media_root / name).is_file()


def admin_change(client, garment: Garment, **changes):
    data = {"sku": garment.sku, "title": garment.title, "description": "", "colour": "Red"}
    data.update(category=garment.category_id, attributes="{}", **changes)
    return client.post(f"/admin/retrieval/garment/{garment.pk}/change/", data)


def test_replacing_an_image_in_the_admin_deletes_the_old_file(admin_client, media_root, committed):
    garment = GarmentFactory()
    old = garment.image.name
    with committed():
        response = admin_change(admin_client, garment, image=upload(jpeg_bytes((0, 0, 200))))
    assert response.status_code == 302, response.content[:2000]
    garment.refresh_from_db()
    assert garment.image.name != old and OURS.fullmatch(garment.image.name)
    assert files_under(media_root) == [garment.image.name]

    with committed():  # other fields only: the image and its file stay
        assert admin_change(admin_client, garment, title="Renamed").status_code == 302
    assert files_under(media_root) == [garment.image.name]


def test_replacing_an_image_through_the_api_deletes_the_old_file(staff_api, media_root, committed):
    garment = GarmentFactory()
    first = garment.image.name
    with committed():
        response = staff_api.patch(
            f"{GARMENTS}{garment.pk}/", {"image": upload(jpeg_bytes((0, 200, 0)))}, "multipart"
        )
    assert response.status_code == 200, response.content
    garment.refresh_from_db()
    second = garment.image.name
    assert second != first and files_under(media_root) == [second]

    data = {"sku": garment.sku, "title": "Put", "category": garment.category.slug}
    with committed():
        response = staff_api.put(
            f"{GARMENTS}{garment.pk}/", {**data, "image": upload(jpeg_bytes())}, "multipart"
        )
    assert response.status_code == 200, response.content
    garment.refresh_from_db()
    assert garment.image.name not in (first, second)
    assert files_under(media_root) == [garment.image.name]


def test_a_rolled_back_replacement_keeps_the_old_file(media_root, committed):
    garment = GarmentFactory()
    old = garment.image.name
    with committed() as callbacks, pytest.raises(RuntimeError), transaction.atomic():
        garment.image = upload(jpeg_bytes((0, 0, 200)))
        catalogue.save_garment(garment=garment, image_changed=True)
        new = garment.image.name
        raise RuntimeError("the request failed after the garment was saved")
    assert callbacks == []  # discarded with the transaction: nothing deleted
    assert Garment.objects.get(pk=garment.pk).image.name == old
    assert exists(media_root, old)
    # The new file the rolled-back row named is left behind (Django has no on-rollback
    # hook): an orphan that prune_media takes once it is old enough.
    assert exists(media_root, new)


@pytest.mark.faults
def test_a_database_failure_in_a_replacement_keeps_the_old_file_and_removes_the_new(
    media_root, committed, refuse_sku_boom
):
    garment = GarmentFactory(sku="KEEP")
    old = garment.image.name
    garment.sku = "BOOM"  # the trigger refuses the UPDATE, after the new file was stored
    garment.image = upload(jpeg_bytes((0, 0, 200)))
    with committed() as callbacks, pytest.raises(DatabaseError):
        catalogue.save_garment(garment=garment, image_changed=True)
    assert callbacks == []
    assert Garment.objects.get(pk=garment.pk).image.name == old
    assert files_under(media_root) == [old]


def test_deleting_garments_in_the_admin_deletes_their_files(admin_client, media_root, committed):
    one, two, three, kept = GarmentFactory.create_batch(4)
    with committed():
        response = admin_client.post(f"/admin/retrieval/garment/{one.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert not exists(media_root, one.image.name)

    with committed():  # the changelist's bulk "delete selected" action
        response = admin_client.post(
            "/admin/retrieval/garment/",
            {"action": "delete_selected", "_selected_action": [two.pk, three.pk], "post": "yes"},
        )
    assert response.status_code == 302
    assert list(Garment.objects.values_list("pk", flat=True)) == [kept.pk]
    assert files_under(media_root) == [kept.image.name]


def test_deleting_a_garment_through_the_api_or_a_queryset_deletes_its_file(
    staff_api, media_root, committed
):
    garment, other = GarmentFactory.create_batch(2)
    with committed():
        assert staff_api.delete(f"{GARMENTS}{garment.pk}/").status_code == 204
    assert files_under(media_root) == [other.image.name]
    with committed():
        Garment.objects.filter(pk=other.pk).delete()
    assert files_under(media_root) == []


def test_a_rolled_back_deletion_keeps_the_file(media_root, committed):
    garment = GarmentFactory()
    with committed() as callbacks, pytest.raises(RuntimeError), transaction.atomic():
        Garment.objects.filter(pk=garment.pk).delete()
        raise RuntimeError("rolled back")
    assert callbacks == [] and Garment.objects.filter(pk=garment.pk).exists()
    assert files_under(media_root) == [garment.image.name]


def test_a_file_another_garment_still_names_is_kept(staff_api, media_root, committed):
    """Stored names are unique (a fresh uuid per stored file), but a row can be pointed at
    another garment's file by hand: that file stays while any garment names it."""
    first = GarmentFactory()
    shared = first.image.name
    second = GarmentFactory(image=shared)
    assert files_under(media_root) == [shared]
    with committed():
        assert staff_api.delete(f"{GARMENTS}{first.pk}/").status_code == 204
    assert files_under(media_root) == [shared]  # second still names it
    third = GarmentFactory(image=shared)
    with committed():
        response = staff_api.patch(
            f"{GARMENTS}{second.pk}/", {"image": upload(jpeg_bytes())}, "multipart"
        )
    assert response.status_code == 200
    second.refresh_from_db()
    assert files_under(media_root) == sorted([shared, second.image.name])  # third names it
    with committed():
        third.delete()
    assert files_under(media_root) == [second.image.name]


def test_a_reimport_with_a_changed_image_deletes_the_old_file(media_root, tmp_path, committed):
    rows = [("940", "Tshirts", "Tee"), ("941", "Tshirts", "Tee")]
    with committed():
        catalogue.import_catalog(
            source=catalogue_zip(
                tmp_path / "a.zip", rows, {"940": jpeg_bytes(), "941": jpeg_bytes((0, 90, 0))}
            )
        )
    before = dict(Garment.objects.values_list("sku", "image"))
    changed = {"940": jpeg_bytes((0, 0, 200)), "941": jpeg_bytes((0, 90, 0))}
    with committed():
        job = catalogue.import_catalog(source=catalogue_zip(tmp_path / "b.zip", rows, changed))
    assert (job.updated, job.unchanged) == (1, 1)
    after = dict(Garment.objects.values_list("sku", "image"))
    assert after["941"] == before["941"] and after["940"] != before["940"]
    assert files_under(media_root) == sorted(after.values())


@pytest.mark.django_db(transaction=True)
def test_real_commits_delete_files_and_a_failed_delete_never_fails_the_request(
    staff_api, media_root, caplog
):
    """Committed for real (no test transaction around the requests): the deletions run inside
    the request, after its commit. A file that cannot be deleted (here a non-empty folder
    where the file was: rmdir fails) is logged and left; the request still succeeds."""
    from fashionsite.celery import app

    try:
        garment, stuck = GarmentFactory.create_batch(2)
        first = garment.image.name
        response = staff_api.patch(
            f"{GARMENTS}{garment.pk}/", {"image": upload(jpeg_bytes())}, "multipart"
        )
        assert response.status_code == 200, response.content
        garment.refresh_from_db()
        assert not exists(media_root, first) and exists(media_root, garment.image.name)
        assert staff_api.delete(f"{GARMENTS}{garment.pk}/").status_code == 204
        assert not exists(media_root, garment.image.name)

        path = media_root / stuck.image.name
        path.unlink()
        (path / "inside").mkdir(parents=True)
        with caplog.at_level(logging.WARNING, logger="retrieval.catalogue"):
            assert staff_api.delete(f"{GARMENTS}{stuck.pk}/").status_code == 204
        assert not Garment.objects.exists()
        assert path.is_dir()
        assert f"could not delete the image {stuck.image.name}" in caplog.text
    finally:
        app.control.purge()  # the indexing the PATCH queued: no worker needs it


def test_prune_media_lists_then_deletes_old_unreferenced_files(media_root):
    garment = GarmentFactory()
    old_orphan = "garments/2020/01/" + "a" * 32 + ".jpg"
    new_orphan = "garments/2020/01/" + "b" * 32 + ".jpg"
    other_media = "imports/2020/01/" + "c" * 32 + ".zip"  # not a garment image: never touched
    for name in (old_orphan, new_orphan, other_media):
        (media_root / name).parent.mkdir(parents=True, exist_ok=True)
        (media_root / name).write_bytes(jpeg_bytes())
    two_hours_ago = time.time() - 7200
    for name in (old_orphan, other_media, garment.image.name):
        os.utime(media_root / name, (two_hours_ago, two_hours_ago))
    everything = files_under(media_root)

    def prune(*args: str) -> str:
        out = io.StringIO()
        call_command("prune_media", *args, stdout=out)
        return out.getvalue()

    dry = prune("--dry-run")
    assert f"would delete {old_orphan}" in dry
    assert garment.image.name not in dry and new_orphan not in dry
    size = (media_root / old_orphan).stat().st_size
    assert f"1 unreferenced file(s), {size} bytes: dry run, nothing deleted" in dry
    assert "1 newer than 60 minutes kept; 1 in use" in dry
    assert files_under(media_root) == everything

    real = prune()
    assert f"deleted {old_orphan}" in real and "1 deleted" in real
    assert files_under(media_root) == sorted(set(everything) - {old_orphan})

    half_an_hour_ago = time.time() - 1800
    os.utime(media_root / new_orphan, (half_an_hour_ago, half_an_hour_ago))
    assert new_orphan not in prune()  # under the default 60 minutes
    assert f"deleted {new_orphan}" in prune("--older-than", "20")
    assert files_under(media_root) == sorted([garment.image.name, other_media])
    with pytest.raises(CommandError):
        prune("--older-than", "0")


def test_the_periodic_task_deletes_old_orphans_and_keeps_referenced_and_recent_files(media_root):
    """Beat's prune_media task (in this process: real database, real files) does what
    ``manage.py prune_media`` does; a second run finds nothing (idempotent)."""
    garment = GarmentFactory()
    old_orphan = "garments/2020/01/" + "d" * 32 + ".jpg"
    new_orphan = "garments/2020/01/" + "e" * 32 + ".jpg"
    for name in (old_orphan, new_orphan):
        (media_root / name).parent.mkdir(parents=True, exist_ok=True)
        (media_root / name).write_bytes(jpeg_bytes())
    two_hours_ago = time.time() - 7200
    for name in (old_orphan, garment.image.name):
        os.utime(media_root / name, (two_hours_ago, two_hours_ago))
    size = (media_root / old_orphan).stat().st_size

    result = tasks.prune_media.apply().get()
    assert result == {"deleted": 1, "failed": 0, "bytes": size, "recent": 1, "referenced": 1}
    assert not (media_root / old_orphan).exists()
    assert (media_root / garment.image.name).exists()
    assert (media_root / new_orphan).exists()
    assert tasks.prune_media.apply().get()["deleted"] == 0
    # An explicit age: the newer orphan (just written) is not 1 minute old yet either.
    assert tasks.prune_media.apply(kwargs={"older_than_minutes": 1}).get()["recent"] == 1
