"""Catalogue imports against real PostgreSQL: each bad row (binary junk too) reported with its
reason and the rest kept, re-imports changing nothing, categories from the chosen column."""

from __future__ import annotations

import pytest

from retrieval import catalogue
from retrieval.models import Garment, ImportJob
from tests.catalogue_zips import HEADER, make_catalogue, row
from tests.factories import jpeg_bytes
from tests.images_corpus import catalogue_zip


@pytest.mark.django_db
def test_import_reports_each_bad_row_and_keeps_the_rest(bad_catalogue, settings):
    settings.RETRIEVAL_MAX_UPLOAD_BYTES = 200_000
    job = catalogue.import_catalog(source=bad_catalogue)
    assert job.status == ImportJob.Status.DONE
    reasons = {(p["sku"] or p["file"]): p["reason"] for p in job.problems}
    assert "missing" in reasons["104"]
    assert "empty articleType" in reasons["105"]
    assert "duplicate" in reasons["100"]
    assert "unsafe" in reasons["106"]
    assert "limit" in reasons["107"]
    assert "unsafe" in reasons["../../escape.txt"]
    # Images are decoded (and re-encoded) as they are imported: what does not decode is
    # refused with its reason, like any other bad row.
    assert "not an image" in reasons["101"]
    assert "truncated" in reasons["102"]
    assert "too large" in reasons["103"]
    # Refused rows are not stored; the rest are, pending indexing.
    assert set(Garment.objects.values_list("sku", flat=True)) == {"100"}
    assert job.created == 1


@pytest.mark.django_db
def test_non_utf8_csv_is_imported_and_reported(tmp_path):
    csv = (HEADER + row("200", title="Café tee")).encode("latin-1")
    path = make_catalogue(tmp_path / "c.zip", "", {"200.jpg": jpeg_bytes()}, csv_bytes=csv)
    job = catalogue.import_catalog(source=path)
    assert Garment.objects.get(sku="200").title == "Café tee"
    assert any("not UTF-8" in p["reason"] for p in job.problems)


@pytest.mark.django_db
def test_reimport_changes_nothing_and_updates_by_sku(tmp_path):
    images = {f"{i}.jpg": jpeg_bytes((40 * (i - 300), 0, 0)) for i in range(300, 305)}
    rows = "".join(row(str(i)) for i in range(300, 305))
    path = make_catalogue(tmp_path / "c.zip", rows, images)
    first = catalogue.import_catalog(source=path)
    before = {g.sku: (g.pk, g.updated_at, g.image.name) for g in Garment.objects.all()}
    second = catalogue.import_catalog(source=path)
    after = {g.sku: (g.pk, g.updated_at, g.image.name) for g in Garment.objects.all()}
    assert (first.created, second.created, second.updated, second.unchanged) == (5, 0, 0, 5)
    assert {k: v[0] for k, v in after.items()} == {k: v[0] for k, v in before.items()}
    assert {k: v[2] for k, v in after.items()} == {k: v[2] for k, v in before.items()}

    # A changed title updates that garment in place, never a duplicate.
    rows = rows.replace("Tee 302", "Better tee")
    third = catalogue.import_catalog(source=make_catalogue(tmp_path / "d.zip", rows, images))
    assert (third.created, third.updated, third.unchanged) == (0, 1, 4)
    assert Garment.objects.get(sku="302").title == "Better tee"
    assert Garment.objects.count() == 5


@pytest.mark.django_db
def test_categories_are_created_from_the_chosen_column_and_merge_moves_garments(tmp_path):
    rows = row("400", category="Tshirts") + row("401", category="tshirts") + row("402", "Shirts")
    images = {f"{i}.jpg": jpeg_bytes((40 * (i - 400), 0, 0)) for i in (400, 401, 402)}
    catalogue.import_catalog(source=make_catalogue(tmp_path / "c.zip", rows, images))
    tshirts = Garment.objects.get(sku="400").category
    assert Garment.objects.get(sku="401").category == tshirts  # case-insensitive match
    shirts = Garment.objects.get(sku="402").category
    moved = catalogue.merge_categories(sources=[shirts], target=tshirts)
    assert moved == 1
    assert set(Garment.objects.values_list("category", flat=True)) == {tshirts.pk}


@pytest.mark.django_db
def test_a_catalogue_row_with_binary_junk_is_reported_and_the_rest_imported(tmp_path, media_root):
    """PostgreSQL text cannot hold NUL: such a row is a problem of its own, not the end of the
    whole import."""
    rows = [("940", "Tshirts", "Tee\x00\x01junk"), ("941", "Tshirts", "Tee")]
    source = catalogue_zip(tmp_path / "c.zip", rows, {"940": jpeg_bytes(), "941": jpeg_bytes()})
    job = catalogue.import_catalog(source=source)
    assert job.status == ImportJob.Status.DONE, job.error
    assert [(p["sku"], p["reason"]) for p in job.problems] == [
        ("940", "a NUL character in the row (binary data in the CSV?)")
    ]
    imported = Garment.objects.filter(sku__in=["940", "941"]).values_list("sku", flat=True)
    assert list(imported) == ["941"]
