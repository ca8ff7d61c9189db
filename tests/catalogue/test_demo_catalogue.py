"""The demo catalogue in the repository (demo/catalogue.zip): what `make run` fills an empty
shop with when there is no CATALOG and no shared sample, and that it makes a searchable shop."""

from __future__ import annotations

import csv
import io
import zipfile
from collections import Counter

import pytest
from django.conf import settings
from django.core.management import call_command
from django.test import Client
from PIL import Image
from rest_framework.test import APIClient

from retrieval import search, training
from retrieval.management.commands.runsite import default_catalog
from retrieval.models import FeatureModel, Garment, ImportJob

pytestmark = pytest.mark.django_db


def demo_rows() -> list[dict]:
    with zipfile.ZipFile(settings.DEMO_CATALOG) as demo:
        return list(csv.DictReader(io.StringIO(demo.read("styles.csv").decode())))


def repeated_photos(rows: list[dict]) -> dict[str, str]:
    """{sku: sku of the earlier row with the same decoded pixels}: the rows an import skips
    (issue #16: an exact duplicate is reported and skipped). Decoded here with Pillow alone,
    not with the product's fingerprint, so the test checks the product's rule."""
    first: dict[tuple, str] = {}
    repeats: dict[str, str] = {}
    with zipfile.ZipFile(settings.DEMO_CATALOG) as demo:
        for row in rows:
            with Image.open(io.BytesIO(demo.read(f"images/{row['id']}.jpg"))) as image:
                rgb = image.convert("RGB")
                key = (rgb.size, rgb.tobytes())
            if key in first:
                repeats[row["id"]] = first[key]
            else:
                first[key] = row["id"]
    return repeats


def test_the_demo_catalogue_is_small_complete_and_attributed():
    assert settings.DEMO_CATALOG.stat().st_size < 10 * 1024 * 1024
    rows = demo_rows()
    departments = Counter(row["masterCategory"] for row in rows)
    assert {"Apparel", "Accessories", "Footwear", "Personal Care"} <= set(departments)
    assert len({row["articleType"] for row in rows}) >= 50
    with zipfile.ZipFile(settings.DEMO_CATALOG) as demo:
        names = set(demo.namelist())
        readme = demo.read("README.md").decode()
    assert all(f"images/{row['id']}.jpg" in names for row in rows)
    assert "Fashion Product Images (Small)" in readme and "MIT licence" in readme
    assert (settings.BASE_DIR / "demo" / "README.md").read_text() == readme


def test_an_empty_shop_without_the_shared_sample_takes_the_demo(settings, tmp_path):
    assert not Garment.objects.exists()
    settings.SAMPLE_CATALOG = tmp_path / "absent.zip"
    assert default_catalog() == settings.DEMO_CATALOG
    settings.DEMO_CATALOG = tmp_path / "also-absent.zip"
    assert default_catalog() is None


@pytest.mark.slow
def test_make_run_without_the_shared_sample_serves_a_searchable_demo_shop(
    settings, tmp_path, media_root
):
    """What `make run` does on a clean clone without ../shared, end to end: the catalogue it
    picks (the demo), the same import command (`import_catalog PATH --wait --train`, which
    imports, indexes and trains the first model), then every kind of search. The search by
    photo uses held-out photos (the training split's test part): the model never saw them, and
    what comes back besides the garment itself must be mostly of its category."""
    settings.SAMPLE_CATALOG = tmp_path / "no-shared" / "fashion-product-images-small.zip"
    source = default_catalog()
    assert source == settings.DEMO_CATALOG
    call_command("import_catalog", str(source), wait=True, train=True, stdout=io.StringIO())
    job = ImportJob.objects.get()
    assert job.status == ImportJob.Status.DONE, job.error
    # Rows whose photo repeats an earlier row's pixels are reported (the row, the garment
    # it duplicates) and skipped; every other row is a garment.
    every_row = demo_rows()
    repeats = repeated_photos(every_row)
    rows = [row for row in every_row if row["id"] not in repeats]
    assert job.created == len(rows)
    assert sorted((p["sku"], p["code"], p["duplicate_sku"]) for p in job.problems) == sorted(
        (sku, "duplicate_image", original) for sku, original in repeats.items()
    )
    assert not Garment.objects.filter(sku__in=list(repeats)).exists()
    garments = Garment.objects.filter(import_job=job)
    assert garments.filter(status=Garment.Status.READY).count() == len(rows)
    assert FeatureModel.objects.filter(active=True).count() == 1
    # The attributes are fields, filterable.
    by_gender = Counter(row["gender"] for row in rows)
    assert garments.filter(gender="Women").count() == by_gender["Women"]
    # Search by photo with held-out photos: one from each of the 10 largest categories.
    ready = list(garments.order_by("pk").values_list("pk", "sku", "category__name"))
    split = training.split_catalogue(skus=[r[1] for r in ready], labels=[r[2] for r in ready])
    largest = [name for name, _ in Counter(r[2] for r in ready).most_common(10)]
    held_out: dict[str, int] = {}
    for i in split["test"]:
        held_out.setdefault(ready[i][2], ready[i][0])
    shares = []
    for name in largest:
        garment = Garment.objects.get(pk=held_out[name])
        with garment.image.open("rb") as handle:
            result = search.search_image(image=handle.read(), top=11)
        assert result.hits[0].garment_id == garment.pk  # a catalogue photo finds itself first
        others = [h.garment_id for h in result.hits if h.garment_id != garment.pk][:10]
        categories = Garment.objects.filter(pk__in=others).values_list("category__name", flat=True)
        assert len(others) == 10
        shares.append(sum(c == name for c in categories) / 10)
    # Precision@10 of the category over held-out photos: the trained model groups by category
    # (chance is about 1/60 over the demo's categories).
    assert sum(shares) / len(shares) >= 0.6, dict(zip(largest, shares, strict=True))
    assert sum(share >= 0.5 for share in shares) >= 7, dict(zip(largest, shares, strict=True))
    # Within filters only matches.
    women = garments.filter(gender="Women", colour="Black").order_by("sku").first()
    assert women is not None
    with women.image.open("rb") as handle:
        photo = handle.read()
    men = search.search_image(image=photo, top=10, filters=search.SearchFilters(gender="Men"))
    assert len(men.hits) == 10
    assert set(Garment.objects.filter(pk__in=[h.garment_id for h in men.hits]).values_list(
        "gender", flat=True)) == {"Men"}  # fmt: skip
    # Keyword search and facets over the API.
    client = APIClient()
    body = client.get("/api/v1/garments/", {"q": "black women", "facets": "true"}).json()
    assert body["count"] > 0
    assert body["facets"]["gender"][0]["value"] == "Women"  # the most garments first
    assert all("black" in (g["title"] + g["colour"]).lower() for g in body["results"])
    # And the home page is the shop, not the empty state.
    page = Client().get("/")
    assert page.status_code == 200
    assert f"{len(rows):,} garments searchable" in page.content.decode()
