"""The demo catalogue in the repository (demo/catalogue.zip): what `make run` fills an empty
shop with when there is no CATALOG and no shared sample, and that it makes a searchable shop."""

from __future__ import annotations

import csv
import io
import zipfile
from collections import Counter

import pytest
from django.conf import settings
from rest_framework.test import APIClient

from retrieval import catalogue, indexing, search, training
from retrieval.management.commands.runsite import default_catalog
from retrieval.models import Garment, ImportJob

pytestmark = pytest.mark.django_db


def demo_rows() -> list[dict]:
    with zipfile.ZipFile(settings.DEMO_CATALOG) as demo:
        return list(csv.DictReader(io.StringIO(demo.read("styles.csv").decode())))


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
def test_the_demo_catalogue_imports_trains_and_is_searchable(media_root):
    """What `make run` does with the demo (import, index, train), then every kind of search."""
    job = catalogue.import_catalog(source=settings.DEMO_CATALOG)
    assert job.status == ImportJob.Status.DONE, job.error
    rows = demo_rows()
    assert job.created == len(rows) and not job.problems
    garments = Garment.objects.filter(import_job=job)
    indexing.wait_for_garments(garments=garments, poll_seconds=0.5)
    assert garments.filter(status=Garment.Status.READY).count() == len(rows)
    training.train_model(epochs=10)
    # The attributes are fields, filterable.
    by_gender = Counter(row["gender"] for row in rows)
    assert garments.filter(gender="Women").count() == by_gender["Women"]
    # Search by photo: a demo photo finds itself first, and within filters only matches.
    garment = garments.filter(gender="Women", colour="Black").order_by("sku").first()
    assert garment is not None
    with garment.image.open("rb") as handle:
        photo = handle.read()
    result = search.search_image(image=photo, top=10)
    assert result.hits[0].garment_id == garment.pk
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
