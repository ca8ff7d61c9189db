"""Every write in the admin and the API checks a Django permission, not only is_staff: a staff
member allowed to view the catalogue changes nothing, whichever door they try."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.test import Client
from rest_framework.test import APIClient

from retrieval.models import Category, ClusterRun, EvaluationReport, FeatureModel, Garment
from retrieval.tokens import issue_token
from tests.factories import CategoryFactory, FeatureModelFactory, GarmentFactory

pytestmark = pytest.mark.django_db

RETRIEVAL_MODELS = (
    "category", "garment", "garmentfeature", "backbonefeature", "featuremodel", "clusterrun",
    "evaluationreport", "importjob", "searchlog",
)  # fmt: skip


def staff_with(django_user_model, name: str, codenames) -> Any:
    user = django_user_model.objects.create_user(name, password="pw-long-enough", is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(content_type__app_label="retrieval", codename__in=codenames)
    )
    return user


@pytest.fixture
def viewer(django_user_model, fast_password_hashing):
    return staff_with(django_user_model, "viewer", [f"view_{m}" for m in RETRIEVAL_MODELS])


@pytest.fixture
def viewer_client(viewer) -> Client:
    client = Client()
    client.force_login(viewer)
    return client


@pytest.fixture
def catalogue():
    tees, shirts = CategoryFactory(name="Tees"), CategoryFactory(name="Shirts")
    garments: list[Any] = [
        GarmentFactory(category=tees, status=Garment.Status.FAILED) for _ in range(2)
    ]
    return tees, shirts, garments


def test_a_view_only_staff_member_sees_every_list(viewer_client):
    for name in RETRIEVAL_MODELS:
        assert viewer_client.get(f"/admin/retrieval/{name}/").status_code == 200, name


def test_a_view_only_staff_member_cannot_run_any_admin_action(viewer_client, catalogue):
    tees, shirts, garments = catalogue
    ids = [g.pk for g in garments]
    for url, action, extra in (
        ("/admin/retrieval/garment/", "move_to_category", {"category": shirts.pk}),
        ("/admin/retrieval/garment/", "reindex_selected", {}),
        ("/admin/retrieval/garment/", "delete_selected", {"post": "yes"}),
        ("/admin/retrieval/category/", "merge_into", {"category": shirts.pk}),
    ):
        selected = [tees.pk] if "category/" in url else ids
        viewer_client.post(url, {"action": action, "_selected_action": selected, **extra})
    assert Category.objects.filter(pk=tees.pk).exists()
    assert Garment.objects.filter(category=tees, status=Garment.Status.FAILED).count() == 2
    # The actions are not even offered.
    page = viewer_client.get("/admin/retrieval/garment/").content.decode()
    assert "move_to_category" not in page and "reindex_selected" not in page


def test_a_view_only_staff_member_is_refused_every_custom_view_and_form(viewer_client, catalogue):
    tees, _, garments = catalogue
    model: Any = FeatureModelFactory(active=False)
    posts = [
        "/admin/retrieval/featuremodel/train/",
        f"/admin/retrieval/featuremodel/{model.pk}/activate/",
        "/admin/retrieval/evaluationreport/run/",
        f"/admin/retrieval/garment/{garments[0].pk}/change/",
        f"/admin/retrieval/category/{tees.pk}/delete/",
        "/admin/retrieval/garment/add/",
        "/admin/retrieval/importjob/add/",
    ]
    for url in posts:
        assert viewer_client.post(url, {"title": "changed", "post": "yes"}).status_code == 403, url
    assert viewer_client.get(f"/admin/retrieval/featuremodel/{model.pk}/activate/").status_code == (
        403
    )
    assert FeatureModel.objects.count() == 1 and EvaluationReport.objects.count() == 0
    assert not FeatureModel.objects.filter(pk=model.pk, active=True).exists()
    assert Garment.objects.filter(title="changed").count() == 0


def test_custom_views_check_the_view_permission_too(django_user_model, fast_password_hashing):
    from retrieval.models import ImportJob

    nobody = staff_with(django_user_model, "nobody", [])
    client = Client()
    client.force_login(nobody)
    job = ImportJob.objects.create(source="x.zip")
    report = EvaluationReport.objects.create(status=EvaluationReport.Status.DONE)
    assert client.get(f"/admin/retrieval/importjob/{job.pk}/progress/").status_code == 403
    assert client.get("/admin/retrieval/searchlog/dashboard/").status_code == 403
    assert (
        client.get(f"/admin/retrieval/evaluationreport/{report.pk}/download.json").status_code
        == 403
    )


def test_models_and_runs_have_no_raw_add_form_and_active_is_not_a_checkbox(admin_client):
    model: Any = FeatureModelFactory(active=True)
    assert admin_client.get("/admin/retrieval/featuremodel/add/").status_code == 403
    assert admin_client.get("/admin/retrieval/clusterrun/add/").status_code == 403
    page = admin_client.get(f"/admin/retrieval/featuremodel/{model.pk}/change/").content.decode()
    assert 'name="active"' not in page and 'name="colour_weight"' not in page
    # Even a superuser's posted "active" is ignored: activation is the explicit action.
    admin_client.post(f"/admin/retrieval/featuremodel/{model.pk}/change/", {"active": ""})
    assert FeatureModel.objects.get(pk=model.pk).active
    # The live model cannot be deleted from the admin either.
    assert (
        admin_client.post(
            f"/admin/retrieval/featuremodel/{model.pk}/delete/", {"post": "yes"}
        ).status_code
        == 403
    )
    assert ClusterRun.objects.count() == 0


def test_api_writes_check_model_permissions(viewer, django_user_model, fast_password_hashing):
    garment: Any = GarmentFactory()
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {issue_token(user=viewer).key}")
    assert api.get(f"/api/v1/garments/{garment.pk}/").status_code == 200
    for method, url in (
        ("post", "/api/v1/garments/"),
        ("patch", f"/api/v1/garments/{garment.pk}/"),
        ("delete", f"/api/v1/garments/{garment.pk}/"),
        ("post", "/api/v1/categories/"),
        ("patch", f"/api/v1/categories/{garment.category_id}/"),
        ("delete", f"/api/v1/categories/{garment.category_id}/"),
    ):
        response = getattr(api, method)(url, {"title": "changed", "name": "x"}, format="json")
        assert response.status_code == 403, (method, url, response.content)
    assert Garment.objects.filter(pk=garment.pk, title=garment.title).exists()
    # With the change permission the same request goes through.
    editor = staff_with(django_user_model, "editor", ["view_garment", "change_garment"])
    api.credentials(HTTP_AUTHORIZATION=f"Token {issue_token(user=editor).key}")
    response = api.patch(f"/api/v1/garments/{garment.pk}/", {"title": "changed"}, format="json")
    assert response.status_code == 200, response.content
    assert Garment.objects.get(pk=garment.pk).title == "changed"


def test_only_superusers_see_api_tokens(admin_client, django_user_model, fast_password_hashing):
    every = Permission.objects.all().values_list("codename", flat=True)
    staff = django_user_model.objects.create_user("all-perms", password="pw-x", is_staff=True)
    staff.user_permissions.set(Permission.objects.filter(codename__in=list(every)))
    client = Client()
    client.force_login(staff)
    assert client.get("/admin/retrieval/apitoken/").status_code == 403
    assert "apitoken" not in client.get("/admin/").content.decode()
    assert admin_client.get("/admin/retrieval/apitoken/").status_code == 200


def test_the_admin_groups_catalogue_work_apart_from_technical_sections(admin_client):
    page = admin_client.get("/admin/").content.decode()
    assert "shop admin" in page
    catalogue, technical = page.index(">Catalogue<"), page.index("Search engine (technical)")
    assert catalogue < technical
    assert (
        page.index("/admin/retrieval/garment/")
        < technical
        < page.index("/admin/retrieval/featuremodel/")
    )


def test_garment_attributes_are_fields_and_status_a_badge(admin_client):
    garment: Any = GarmentFactory(attributes={"season": "Summer", "year": 2012})
    page = admin_client.get(f"/admin/retrieval/garment/{garment.pk}/change/").content.decode()
    assert 'name="attribute__season"' in page and 'value="Summer"' in page
    assert 'href="/admin/r/' in page  # "view on site"
    response = admin_client.post(
        f"/admin/retrieval/garment/{garment.pk}/change/",
        {
            "sku": garment.sku, "title": garment.title, "description": "",
            "category": garment.category_id, "colour": "Red",
            "attribute__season": "Winter", "attribute__year": "2012",
            "new_attribute_name": "usage", "new_attribute_value": "Casual",
        },
    )  # fmt: skip
    assert response.status_code == 302, response.content.decode()[:3000]
    garment.refresh_from_db()
    assert garment.attributes == {"season": "Winter", "year": 2012, "usage": "Casual"}
    listing = admin_client.get("/admin/retrieval/garment/").content.decode()
    assert 'class="fs-badge fs-badge-ok"' in listing
