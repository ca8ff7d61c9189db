"""Management commands as a person runs them."""

from __future__ import annotations

import io
import json

import pytest
from django.core.management import CommandError, call_command

from retrieval import catalogue
from retrieval.models import Category, Garment
from tests.catalogue_zips import make_catalogue, row
from tests.factories import distinct_jpeg, jpeg_bytes

pytestmark = pytest.mark.django_db


def test_features_json_without_a_trained_model(tmp_path):
    image = tmp_path / "red.jpg"
    image.write_bytes(jpeg_bytes((220, 20, 20), size=(120, 160)))
    out = io.StringIO()
    call_command("features", str(image), "--json", stdout=out)
    (item,) = json.loads(out.getvalue())
    assert item["image"] == str(image)
    assert len(item["positions"]) == 10 and all(0 <= p < 49 for p in item["positions"])
    assert len(set(item["positions"])) == 10
    assert len(item["colour"]) == 30
    # The paper's colour feature is z-scored over the 10x3 matrix: mean 0, std 1.
    assert abs(sum(item["colour"]) / 30) < 1e-4
    assert "deep" not in item and "fused" not in item  # no head trained yet
    assert "no trained head" in item["model"]


def test_features_reports_a_bad_file_and_fails(tmp_path):
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image")
    err = io.StringIO()
    with pytest.raises(CommandError, match="1 of 1"):
        call_command("features", str(bad), stdout=io.StringIO(), stderr=err)
    assert "not an image" in err.getvalue()


def test_train_model_refuses_an_empty_catalogue():
    with pytest.raises(CommandError, match="at least 2 categories"):
        call_command("train_model", stdout=io.StringIO())


def test_train_model_checks_its_fine_tuning_options():
    with pytest.raises(CommandError, match="--fine-tune-epochs must be at least 1"):
        call_command("train_model", "--fine-tune", "top", "--fine-tune-epochs", "0")
    with pytest.raises(CommandError, match="invalid choice"):
        call_command("train_model", "--fine-tune", "all", stdout=io.StringIO())
    # resnet50's top is not fine-tunable: said before any work (the model is marked failed).
    with pytest.raises(CommandError, match="cannot fine-tune resnet50"):
        call_command("train_model", "--backbone", "resnet50", "--fine-tune", "top")


def test_build_clusters_without_a_model_says_what_to_do():
    with pytest.raises(CommandError, match="train one first"):
        call_command("build_clusters", stdout=io.StringIO())


def test_evaluate_without_a_model_says_what_to_do():
    with pytest.raises(CommandError, match="no trained feature model"):
        call_command("evaluate", stdout=io.StringIO())


def test_import_catalog_rejects_a_missing_file(tmp_path):
    with pytest.raises(CommandError, match="does not exist"):
        call_command("import_catalog", str(tmp_path / "nope.zip"), stdout=io.StringIO())


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_import_wait_indexes_in_process_when_no_worker_runs(tmp_path):
    from django.core.management import call_command

    # Distinct photos: the same pixels twice would be skipped as an exact duplicate.
    images = {f"{i}.jpg": distinct_jpeg(i - 500) for i in range(500, 520)}
    rows = "".join(row(str(i)) for i in range(500, 520))
    path = make_catalogue(tmp_path / "c.zip", rows, images)
    out = io.StringIO()
    call_command("import_catalog", str(path), "--wait", stdout=out, stderr=io.StringIO())
    assert "20 ready, 0 failed" in out.getvalue()
    assert Garment.objects.filter(status=Garment.Status.READY).count() == 20


def test_import_catalog_with_examples_imports_them_once_the_categories_exist(tmp_path):
    from retrieval.models import ExamplePhoto
    from tests.catalogue_zips import example_row, make_examples

    catalogue_zip = make_catalogue(
        tmp_path / "c.zip",
        row("1", category="Tshirts") + row("2", category="Shirts"),
        {"1.jpg": distinct_jpeg(1), "2.jpg": distinct_jpeg(2)},
    )
    examples = make_examples(
        tmp_path / "e.zip",
        example_row("e1", "Shirts", sender="a") + example_row("e2", "Dresses", sender="a"),
        {"e1.jpg": jpeg_bytes(), "e2.jpg": jpeg_bytes()},
    )
    out = io.StringIO()
    call_command(
        "import_catalog", str(catalogue_zip), "--examples", str(examples), stdout=out,
        stderr=io.StringIO(),
    )  # fmt: skip
    assert f"example photos from {examples}: 1 new" in out.getvalue()
    assert list(ExamplePhoto.objects.values_list("key", "category__name")) == [("e1", "Shirts")]


def test_first_start_imports_example_photos_before_the_first_training(settings, tmp_path):
    from retrieval.management.commands.runsite import import_script

    examples = tmp_path / "shopper-photos.zip"
    examples.write_bytes(b"")
    settings.RETRIEVAL_EXAMPLE_PHOTOS = str(examples)
    script = import_script(path=tmp_path / "catalogue.zip")
    commands = script.split(" && ")
    assert len(commands) == 2
    assert all(f"--examples {examples}" in c and "--train" in c for c in commands)
    settings.RETRIEVAL_EXAMPLE_PHOTOS = ""
    assert "--examples" not in import_script(path=tmp_path / "catalogue.zip")


@pytest.mark.django_db
def test_fingerprint_photos_reports_what_it_did(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    category = Category.objects.create(name="Fingerprint command shirts")
    garment = Garment(sku="FP1", title="FP1", category=category)
    catalogue.store_image(row=garment, source=distinct_jpeg(1), name="fp1.jpg")
    garment.save()
    Garment.objects.filter(pk=garment.pk).update(pixel_hash="", phash=None, thumbnail=None)
    out = io.StringIO()
    call_command("fingerprint_photos", stdout=out)
    assert "1 garment(s) fingerprinted, 0 unreadable, 0 possible duplicate(s)" in out.getvalue()
    garment.refresh_from_db()
    assert garment.pixel_hash and garment.phash is not None
