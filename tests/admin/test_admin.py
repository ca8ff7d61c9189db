"""Staff curation in the admin: upload, validation, actions, import progress."""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from retrieval.models import Category, FeatureModel, Garment, ImportJob
from tests.factories import CategoryFactory, GarmentFactory, jpeg_bytes

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff(admin_client):
    return admin_client


def test_every_model_is_registered_and_lists(staff):
    for name in (
        "category", "garment", "garmentfeature", "backbonefeature", "featuremodel",
        "clusterrun", "evaluationreport", "importjob",
    ):  # fmt: skip
        response = staff.get(f"/admin/retrieval/{name}/")
        assert response.status_code == 200, name


def test_admin_upload_creates_a_pending_garment(staff):
    category = CategoryFactory(name="Dresses")
    response = staff.post(
        "/admin/retrieval/garment/add/",
        {
            "sku": "A1",
            "title": "Red dress",
            "description": "",
            "category": category.pk,
            "colour": "Red",
            "attributes": "{}",
            "image": SimpleUploadedFile("dress.jpg", jpeg_bytes(), content_type="image/jpeg"),
        },
    )
    assert response.status_code == 302, response.content[:2000]
    garment = Garment.objects.get(sku="A1")
    assert garment.status == Garment.Status.PENDING
    assert garment.image.name.endswith(".jpg")


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"this is not an image", "not an image"),
        (b"", "empty"),
    ],
)
def test_admin_upload_refuses_bad_images_with_a_clear_message(staff, payload, message):
    category = CategoryFactory(name="Dresses")
    response = staff.post(
        "/admin/retrieval/garment/add/",
        {
            "sku": "A2",
            "title": "x",
            "category": category.pk,
            "attributes": "{}",
            "image": SimpleUploadedFile("x.jpg", payload, content_type="image/jpeg"),
        },
    )
    assert response.status_code == 400  # the form again, with the reason
    assert message in response.content.decode()
    assert not Garment.objects.filter(sku="A2").exists()


def test_move_action_and_merge_action(staff):
    a, b = CategoryFactory(name="Tees"), CategoryFactory(name="T-Shirts")
    garments = [GarmentFactory(category=a) for _ in range(3)]
    staff.post(
        "/admin/retrieval/garment/",
        {
            "action": "move_to_category",
            "category": b.pk,
            "_selected_action": [g.pk for g in garments[:2]],
        },
    )
    assert Garment.objects.filter(category=b).count() == 2
    staff.post(
        "/admin/retrieval/category/",
        {"action": "merge_into", "category": b.pk, "_selected_action": [a.pk]},
    )
    assert not Category.objects.filter(pk=a.pk).exists()
    assert Garment.objects.filter(category=b).count() == 3


def test_reindex_action_sets_garments_pending(staff):
    garment = GarmentFactory(status=Garment.Status.FAILED, error="boom")
    staff.post(
        "/admin/retrieval/garment/",
        {"action": "reindex_selected", "_selected_action": [garment.pk]},
    )
    garment.refresh_from_db()
    assert garment.status == Garment.Status.PENDING and garment.error == ""


def test_import_job_page_shows_progress(staff):
    job = ImportJob.objects.create(source="x.zip", status=ImportJob.Status.DONE, rows=2)
    GarmentFactory(import_job=job, status=Garment.Status.READY)
    GarmentFactory(import_job=job, status=Garment.Status.PENDING)
    page = staff.get(f"/admin/retrieval/importjob/{job.pk}/change/")
    assert page.status_code == 200
    assert b"import-progress" in page.content
    progress = staff.get(f"/admin/retrieval/importjob/{job.pk}/progress/").json()
    assert (progress["ready"], progress["pending"], progress["percent"]) == (1, 1, 50.0)


def test_admin_needs_staff(client, django_user_model):
    user = django_user_model.objects.create_user("shopper", password="pw-12345-long")
    client.force_login(user)
    assert client.get("/admin/retrieval/garment/").status_code == 302
    job = ImportJob.objects.create(source="x.zip")
    assert client.get(f"/admin/retrieval/importjob/{job.pk}/progress/").status_code == 302


def test_train_button_needs_post(staff):
    assert staff.get("/admin/retrieval/featuremodel/train/").status_code == 405
    assert FeatureModel.objects.count() == 0


def test_evaluation_report_page_shows_tables_chart_and_downloads(staff):
    from retrieval.models import EvaluationReport

    keys = ["p@5", "p@10", "p@20", "cc@5", "cc@10", "cc@20", "ms_mean", "ms_p95"]
    mode = dict.fromkeys(keys, 0.5)
    report = EvaluationReport.objects.create(
        status=EvaluationReport.Status.DONE,
        metrics={
            "queries": 2,
            "skipped": 0,
            "modes": {"fused": mode, "deep": mode},
            "exact": {"fused": mode, "deep": mode},
            "per_category_p@5": {
                "fused": {"Shirts": {"p@5": 0.8, "queries": 1}},
                "deep": {"Shirts": {"p@5": 0.6, "queries": 1}},
            },
            "examples": [],
        },
    )
    page = staff.get(f"/admin/retrieval/evaluationreport/{report.pk}/change/").content.decode()
    assert 'id="evaluation-table"' in page and 'id="evaluation-chart"' in page
    assert "Shirts" in page and "cc@10" in page
    # Readable by a merchandiser (issue #16): plain column names with their explanation, the
    # chart's axis and each bar's value, and a report is read, not saved.
    assert "right category and colour in the top 10" in page
    assert "the share with the photo&#x27;s category and its colour" in page
    assert 'id="evaluation-chart-axis"' in page and ">100%</text>" in page
    assert '<text class="value"' in page and ">0.80</text>" in page and ">0.60</text>" in page
    assert 'name="_save"' not in page and 'name="_continue"' not in page
    as_json = staff.get(f"/admin/retrieval/evaluationreport/{report.pk}/download.json")
    assert as_json.json()["modes"]["fused"]["p@5"] == 0.5
    as_csv = staff.get(f"/admin/retrieval/evaluationreport/{report.pk}/download.csv")
    assert b"cluster,fused,p@5,0.5" in as_csv.content


def test_a_training_models_progress_shows_in_the_list_and_page_which_refresh(staff):
    from tests.factories import FeatureModelFactory

    done = FeatureModelFactory.create(active=True, progress={"stage": "done"})
    page = staff.get("/admin/retrieval/featuremodel/")
    assert b"training-refresh" not in page.content  # nothing trains: no reloading
    training = FeatureModelFactory.create(
        active=False,
        status=FeatureModel.Status.TRAINING,
        progress={
            "stage": "training", "epoch": 3, "epochs": 20, "loss": 0.41234,
            "val_accuracy": 0.8731, "seconds": 42.0, "elapsed_s": 42.0, "left_s": 238.0,
        },
    )  # fmt: skip
    line = "training: epoch 3/20 · loss 0.412 · validation accuracy 0.873 · 0:42 elapsed · "
    line += "about 3:58 left"
    page = staff.get("/admin/retrieval/featuremodel/")
    text = page.content.decode()
    assert line in text and 'id="training-refresh"' in text
    page = staff.get(f"/admin/retrieval/featuremodel/{training.pk}/change/")
    text = page.content.decode()
    assert line in text and 'id="training-refresh"' in text
    page = staff.get(f"/admin/retrieval/featuremodel/{done.pk}/change/")
    assert b"training-refresh" not in page.content
