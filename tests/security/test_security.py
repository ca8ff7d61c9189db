"""Boundaries: only staff reach the admin and the write API (token and session auth, each
allowed and refused), CSRF on every form of the site and the admin, and a clean
``manage.py check --deploy`` under production settings. Real PostgreSQL and Redis."""

from __future__ import annotations

import io
import os
import secrets
import subprocess
import sys
import zipfile
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

import numpy as np
import pytest
from django.conf import settings
from django.contrib import admin
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import resolve, reverse
from rest_framework.test import APIClient

from retrieval.models import (
    Category,
    ClusterRun,
    EvaluationReport,
    FeatureModel,
    Garment,
    ImportJob,
)
from retrieval.tokens import issue_token
from tests.conftest import ROOT, database_url_for
from tests.factories import (
    CategoryFactory,
    FeatureModelFactory,
    GarmentFactory,
    add_vectors,
    jpeg_bytes,
)

pytestmark = [
    pytest.mark.security,
    pytest.mark.django_db,
    pytest.mark.usefixtures("no_search_throttle", "fast_password_hashing"),
]

GARMENTS = "/api/v1/garments/"
CATEGORIES = "/api/v1/categories/"
PASSWORD = "a-long-test-password-1"


@pytest.fixture
def staff_user(django_user_model):
    return django_user_model.objects.create_superuser("boss", "boss@example.com", PASSWORD)


@pytest.fixture
def shopper_user(django_user_model):
    return django_user_model.objects.create_user("shopper", "s@example.com", PASSWORD)


def photo(name: str = "photo.jpg") -> SimpleUploadedFile:
    return SimpleUploadedFile(name, jpeg_bytes(), content_type="image/jpeg")


# --------------------------------------------------------------------------- the admin


@pytest.fixture
def every_kind_of_row():
    """One row of each model the admin shows, so every change and delete page exists."""
    garment = GarmentFactory()
    model = FeatureModelFactory(head_file="", active=False)
    add_vectors(model, [garment], np.zeros((1, 542), np.float32))
    ClusterRun.objects.create(model=model, k=1, n_samples=1)
    ImportJob.objects.create(source="catalogue.zip", status=ImportJob.Status.DONE)
    EvaluationReport.objects.create(status=EvaluationReport.Status.DONE)
    return garment


def admin_pages() -> list[str]:
    """Every admin page: the index, and each registered model's list, add, change and delete
    pages (for its first row), plus the custom views."""
    pages = ["/admin/", "/admin/password_change/"]
    for model in admin.site._registry:
        prefix = f"admin:{model._meta.app_label}_{model._meta.model_name}"
        pages += [reverse(f"{prefix}_changelist"), reverse(f"{prefix}_add")]
        row = model._default_manager.order_by("pk").first()
        if row is not None:
            for view in ("change", "delete", "history"):
                pages.append(reverse(f"{prefix}_{view}", args=[row.pk]))
    job = ImportJob.objects.first()
    report = EvaluationReport.objects.first()
    return [
        *pages,
        reverse("admin:retrieval_importjob_progress", args=[job.pk]),
        reverse("admin:retrieval_evaluationreport_download", args=[report.pk, "json"]),
        reverse("admin:retrieval_featuremodel_train"),
        reverse("admin:retrieval_evaluationreport_run"),
    ]


@pytest.mark.parametrize("who", ["anonymous", "shopper"])
def test_the_admin_is_refused_to_everyone_but_staff(client, who, shopper_user, every_kind_of_row):
    if who == "shopper":
        client.force_login(shopper_user)
    pages = admin_pages()
    assert len(pages) > 30
    counts = (FeatureModel.objects.count(), EvaluationReport.objects.count())
    garments = Garment.objects.count()
    for page in pages:
        for method in ("get", "post"):
            response = getattr(client, method)(page)
            assert response.status_code == 302, (method, page)
            assert response["Location"].startswith("/admin/login/?next="), (method, page)
    # The buttons did nothing (no training queued, no evaluation started, nothing deleted).
    assert (FeatureModel.objects.count(), EvaluationReport.objects.count()) == counts
    assert Garment.objects.count() == garments


def test_staff_reach_every_admin_page(admin_client, every_kind_of_row):
    allowed = {200, 405}  # 405: the train and evaluation buttons answer POST only
    for page in admin_pages():
        response = admin_client.get(page)
        if response.status_code == 403:  # models the admin declares read-only: no add page
            assert page.endswith("/add/"), page
            continue
        assert response.status_code in allowed, page


# --------------------------------------------------------------------------- the write API


def write_requests(objects: dict) -> dict:
    """Each write of the API: (method, url, body, format, expected status when allowed)."""
    garment, category, empty = objects["garment"], objects["category"], objects["empty"]
    new_garment = {"sku": "W1", "title": "T", "category": category.pk, "image": photo()}
    return {
        "garment-create": ("post", GARMENTS, new_garment, "multipart", 201),
        "garment-update": (
            "put",
            f"{GARMENTS}{garment.pk}/",
            {**new_garment, "sku": garment.sku},
            "multipart",
            200,
        ),
        "garment-patch": ("patch", f"{GARMENTS}{garment.pk}/", {"title": "P"}, "json", 200),
        "garment-delete": ("delete", f"{GARMENTS}{garment.pk}/", None, None, 204),
        "category-create": ("post", CATEGORIES, {"name": "Created"}, "json", 201),
        "category-update": ("put", f"{CATEGORIES}{empty.pk}/", {"name": "Renamed"}, "json", 200),
        "category-patch": ("patch", f"{CATEGORIES}{empty.pk}/", {"active": False}, "json", 200),
        "category-delete": ("delete", f"{CATEGORIES}{empty.pk}/", None, None, 204),
    }


def send(client, spec, **extra):
    method, url, body, fmt, _ = spec
    return getattr(client, method)(url, body, format=fmt, **extra)


def session_client(user, *, with_token: bool) -> tuple[APIClient, dict]:
    """A browser-like client: logged in with a session cookie, CSRF enforced as in production;
    the token, when sent, is read from the page as a script would."""
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(user)
    client.get("/")  # a page with a form: sets the CSRF cookie
    token = client.cookies[settings.CSRF_COOKIE_NAME].value
    return client, ({"HTTP_X_CSRFTOKEN": token} if with_token else {})


def token_client(user) -> APIClient:
    client = APIClient(enforce_csrf_checks=True)
    client.credentials(HTTP_AUTHORIZATION=f"Token {issue_token(user=user).key}")
    return client


WRITES = [
    "garment-create",
    "garment-update",
    "garment-patch",
    "garment-delete",
    "category-create",
    "category-update",
    "category-patch",
    "category-delete",
]
WHO = {
    # who: (expected status when refused or None when allowed, the error code)
    "nobody": (401, "not_authenticated"),
    "shopper-token": (403, "permission_denied"),
    "shopper-session-with-csrf": (403, "permission_denied"),
    "staff-session-without-csrf": (403, "permission_denied"),
    "staff-token": (None, None),
    "staff-session-with-csrf": (None, None),
}


@pytest.mark.parametrize("who", list(WHO))
@pytest.mark.parametrize("write", WRITES)
def test_api_writes_need_staff_and_csrf_with_a_session(write, who, staff_user, shopper_user):
    objects = {
        "garment": GarmentFactory(title="Original"),
        "category": CategoryFactory(name="Write Target"),
        "empty": CategoryFactory(name="Empty One"),
    }
    headers: dict = {}
    if who == "nobody":
        client = APIClient(enforce_csrf_checks=True)
    elif who.endswith("token"):
        client = token_client(staff_user if who.startswith("staff") else shopper_user)
    else:
        user = staff_user if who.startswith("staff") else shopper_user
        client, headers = session_client(user, with_token=who.endswith("with-csrf"))
    spec = write_requests(objects)[write]
    before = (Garment.objects.count(), Category.objects.count())
    response = send(client, spec, **headers)
    refused, code = WHO[who]
    if refused is None:
        assert response.status_code == spec[4], response.content[:500]
        return
    assert response.status_code == refused, response.content[:500]
    assert response.json()["error"]["code"] == code
    if who == "staff-session-without-csrf":
        assert "CSRF" in response.json()["error"]["message"]
    assert (Garment.objects.count(), Category.objects.count()) == before
    garment, empty = objects["garment"], objects["empty"]
    assert Garment.objects.filter(pk=garment.pk, title="Original").exists()
    assert Category.objects.filter(pk=empty.pk, name="Empty One", active=True).exists()


def test_anonymous_api_search_needs_no_csrf_token_but_a_staff_session_does(staff_user):
    """Mobile apps post photos without cookies or tokens: CSRF does not apply to them (the
    request reaches validation: a refused file is 400, not 403). A browser session does."""
    not_a_photo = SimpleUploadedFile("x.jpg", b"not a photo", content_type="image/jpeg")
    anonymous = APIClient(enforce_csrf_checks=True)
    response = anonymous.post("/api/v1/search/", {"image": not_a_photo}, format="multipart")
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_image"
    client, _ = session_client(staff_user, with_token=False)
    response = client.post("/api/v1/search/", {"image": photo()}, format="multipart")
    assert response.status_code == 403 and "CSRF" in response.json()["error"]["message"]


@pytest.mark.slow
def test_anonymous_api_search_by_photo_works_without_csrf(trained_catalogue):
    garment = Garment.objects.filter(pk__in=trained_catalogue.ids[Garment]).first()
    with garment.image.open("rb") as handle:
        data = handle.read()
    client = APIClient(enforce_csrf_checks=True)
    image = SimpleUploadedFile("q.jpg", data, content_type="image/jpeg")
    response = client.post("/api/v1/search/", {"image": image}, format="multipart")
    assert response.status_code == 200, response.content[:500]
    assert response.json()["results"][0]["id"] == garment.pk


# --------------------------------------------------------------------------- CSRF on every form


class FormFinder(HTMLParser):
    """The forms of a page: method, action, and the CSRF token they carry (if any)."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[dict] = []
        self._open: dict | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        attributes = dict(attrs)
        if tag == "form":
            self._open = {
                "method": (attributes.get("method") or "get").lower(),
                "action": attributes.get("action") or "",
                "token": None,
            }
            self.forms.append(self._open)
        elif self._open is not None and attributes.get("name") == "csrfmiddlewaretoken":
            self._open["token"] = attributes.get("value")

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._open = None


def post_forms(client, page: str) -> list[dict]:
    response = client.get(page)
    assert response.status_code == 200, page
    finder = FormFinder()
    finder.feed(response.content.decode())
    forms = [f for f in finder.forms if f["method"] == "post"]
    for form in forms:
        form["url"] = urlsplit(urljoin(f"http://testserver{page}", form["action"])).path
        form["page"] = page
    return forms


def browser(user=None) -> Client:
    client = Client(enforce_csrf_checks=True)
    if user is not None:
        client.force_login(user)
    return client


def site_pages() -> list[str]:
    garment = Garment.objects.first()
    return [
        "/",
        "/categories/",
        f"/categories/{garment.category.slug}/",
        f"/garments/{garment.pk}/",
        "/admin/login/",
    ]


def test_every_post_form_carries_a_csrf_token_and_refuses_a_post_without_it(
    staff_user, every_kind_of_row
):
    """Crawl every page of the shop and the admin, find each form that POSTs, and post to it
    without the token: always 403, and nothing changes."""
    visits = [(None, page) for page in site_pages()]
    visits += [(staff_user, page) for page in admin_pages()]
    found: dict[str, dict] = {}
    for user, page in visits:
        client = browser(user)
        if client.get(page).status_code != 200:  # read-only models' add pages, POST-only views
            continue
        for form in post_forms(client, page):
            assert form["token"], f"a POST form without a CSRF token on {page}"
            found.setdefault(form["url"], {**form, "user": user})
    names = {resolve(url).url_name for url in found}
    assert {
        *("home", "login", "logout", "password_change"),
        *("retrieval_garment_add", "retrieval_garment_change", "retrieval_garment_changelist"),
        *("retrieval_garment_delete", "retrieval_category_change", "retrieval_importjob_add"),
        *("retrieval_featuremodel_train", "retrieval_evaluationreport_run"),
        *("retrieval_featuremodel_changelist", "retrieval_category_changelist"),
    } <= names, names
    counts = (Garment.objects.count(), FeatureModel.objects.count(), Category.objects.count())
    for url, form in found.items():
        response = browser(form["user"]).post(url, {"name": "x", "action": "delete_selected"})
        assert response.status_code == 403, (url, form["page"])
        assert b"CSRF" in response.content, url
    assert (Garment.objects.count(), FeatureModel.objects.count(), Category.objects.count()) == (
        counts
    )


def catalogue_zip_upload() -> SimpleUploadedFile:
    data = io.BytesIO()
    with zipfile.ZipFile(data, "w") as archive:
        archive.writestr("styles.csv", "id,articleType\n1,Tshirts\n")
        archive.writestr("images/1.jpg", jpeg_bytes())
    return SimpleUploadedFile("catalogue.zip", data.getvalue(), content_type="application/zip")


def admin_forms(garment: Garment, category: Category, model: FeatureModel) -> dict:
    """Each admin form with valid data: (page showing the form, posted fields, expected)."""
    other = CategoryFactory(name="Merge Target")
    change = f"/admin/retrieval/garment/{garment.pk}/change/"
    fields = {"sku": garment.sku, "title": "Renamed", "description": "", "colour": "Red"}
    fields.update(category=category.pk, attributes="{}")
    return {
        "garment add": (
            "/admin/retrieval/garment/add/",
            {**fields, "sku": "CSRF-1", "image": photo()},
            302,
        ),
        "garment change": (change, fields, 302),
        "garment action": (
            "/admin/retrieval/garment/",
            {"action": "reindex_selected", "_selected_action": [garment.pk]},
            302,
        ),
        "category change": (
            f"/admin/retrieval/category/{category.pk}/change/",
            {"name": category.name, "slug": category.slug, "active": "on"},
            302,
        ),
        "category action": (
            "/admin/retrieval/category/",
            {"action": "merge_into", "category": other.pk, "_selected_action": [category.pk]},
            302,
        ),
        "import upload": (
            "/admin/retrieval/importjob/add/",
            {"upload": catalogue_zip_upload(), "category_field": "articleType"},
            302,
        ),
        "model action": (
            "/admin/retrieval/featuremodel/",
            {"action": "activate_selected", "_selected_action": [model.pk]},
            302,
        ),
        "train button": ("/admin/retrieval/featuremodel/", {}, 302),
        "evaluation button": ("/admin/retrieval/evaluationreport/", {}, 302),
        "password change": (
            "/admin/password_change/",
            {"old_password": PASSWORD, "new_password1": "N3w-pass!", "new_password2": "N3w-pass!"},
            302,
        ),
        "garment delete": (
            f"/admin/retrieval/garment/{garment.pk}/delete/",
            {"post": "yes"},
            302,
        ),
        "logout": ("/admin/", {}, 200),
    }


FORM_URLS = {
    "train button": "/admin/retrieval/featuremodel/train/",
    "evaluation button": "/admin/retrieval/evaluationreport/run/",
    "logout": "/admin/logout/",
}


@pytest.mark.parametrize(
    "name",
    [
        "garment add",
        "garment change",
        "garment action",
        "category change",
        "category action",
        "import upload",
        "model action",
        "train button",
        "evaluation button",
        "password change",
        "garment delete",
        "logout",
    ],
)
def test_each_admin_form_refuses_a_post_without_its_token_and_accepts_it_with(
    name, staff_user, django_capture_on_commit_callbacks
):
    garment = GarmentFactory()
    category = garment.category
    model = FeatureModelFactory(head_file="", active=False)  # the action refuses it: no task
    page, data, expected = admin_forms(garment, category, model)[name]
    url = FORM_URLS.get(name, page)
    client = browser(staff_user)
    [form] = [f for f in post_forms(client, page) if f["url"] == url]
    refused = client.post(url, data)
    assert refused.status_code == 403, refused.content[:300]
    for value in data.values():
        if hasattr(value, "seek"):
            value.seek(0)
    with django_capture_on_commit_callbacks(execute=False):
        accepted = client.post(url, {**data, "csrfmiddlewaretoken": form["token"]})
    assert accepted.status_code == expected, accepted.content[:2000]


def test_the_admin_login_form_needs_its_token(staff_user):
    client = browser()
    [form] = post_forms(client, "/admin/login/")
    data = {"username": "boss", "password": PASSWORD, "next": "/admin/"}
    assert client.post("/admin/login/", data).status_code == 403
    assert client.get("/admin/").status_code == 302  # not logged in
    response = client.post("/admin/login/", {**data, "csrfmiddlewaretoken": form["token"]})
    assert response.status_code == 302 and response["Location"] == "/admin/"
    assert client.get("/admin/").status_code == 200


@pytest.mark.slow
def test_the_shop_search_form_needs_its_token(trained_catalogue):
    garment = Garment.objects.filter(pk__in=trained_catalogue.ids[Garment]).first()
    with garment.image.open("rb") as handle:
        data = handle.read()
    client = browser()
    [form] = post_forms(client, "/")
    image = SimpleUploadedFile("q.jpg", data, content_type="image/jpeg")
    assert client.post("/", {"image": image}).status_code == 403
    image.seek(0)
    response = client.post("/", {"image": image, "csrfmiddlewaretoken": form["token"]})
    assert response.status_code == 200
    assert f'data-garment-id="{garment.pk}"' in response.content.decode()


# --------------------------------------------------------------------------- deploy check


def production_env(tmp_path, **overrides) -> dict:
    """The README's production checklist, with this test session's servers."""
    from django.db import connection

    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "CELERY_"))}
    env.update(
        DJANGO_SETTINGS_MODULE="fashionsite.settings",
        DJANGO_DEBUG="false",
        DJANGO_SECRET_KEY=secrets.token_urlsafe(50),
        DJANGO_ALLOWED_HOSTS="shop.example.com",
        DJANGO_CSRF_TRUSTED_ORIGINS="https://shop.example.com",
        DJANGO_VAR_DIR=str(tmp_path / "var"),
        DATABASE_URL=database_url_for(connection.settings_dict),
        REDIS_URL=settings.REDIS_URL,
        MEDIA_ROOT=str(tmp_path / "media"),
    )
    env.update(overrides)
    return env


def deploy_check(env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_deploy_check_is_clean_under_production_settings(tmp_path):
    result = deploy_check(production_env(tmp_path))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "System check identified no issues" in output and "WARNING" not in output


def test_deploy_check_does_catch_a_weakened_production_setting(tmp_path):
    """The check above is not vacuous: turning the HTTPS redirect off is reported."""
    result = deploy_check(production_env(tmp_path, DJANGO_SECURE_SSL_REDIRECT="false"))
    assert result.returncode != 0
    assert "security.W008" in result.stdout + result.stderr


# --------------------------------------------------------------------------- escaping


def test_markup_in_a_catalogue_csv_stays_text_in_the_admin_import_report(admin_client, tmp_path):
    """The CSV's image column is shown back in the import's problem list (a missing file):
    escaped like everything else (the browser test covers titles and categories)."""
    from retrieval import catalogue

    csv = (
        "id,image,articleType,productDisplayName\n"
        "960,<img src=x onerror=alert(1)>.jpg,Tshirts,<b>Bold tee</b>\n"
        "961,961.jpg,<script>alert(2)</script>,Tee\n"
    )
    source = tmp_path / "c.zip"
    with zipfile.ZipFile(source, "w") as archive:
        archive.writestr("styles.csv", csv)
        archive.writestr("images/961.jpg", jpeg_bytes())
    job = catalogue.import_catalog(source=source)
    assert job.created == 1 and len(job.problems) == 1
    pages = [
        f"/admin/retrieval/importjob/{job.pk}/change/",
        "/admin/retrieval/garment/",
        f"/admin/retrieval/garment/{Garment.objects.get(sku='961').pk}/change/",
        "/admin/retrieval/category/",
    ]
    for page in pages:
        html = admin_client.get(page).content.decode()
        assert "<img src=x" not in html and "<script>alert" not in html, page
    report = admin_client.get(pages[0]).content.decode()
    assert "&lt;img src=x onerror=alert(1)&gt;.jpg: image file missing" in report
    assert "&lt;script&gt;alert(2)&lt;/script&gt;" in admin_client.get(pages[1]).content.decode()
