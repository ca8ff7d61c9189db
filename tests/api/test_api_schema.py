"""The REST API's error shape, CORS, OpenAPI schema and interactive docs, and a schema-driven
fuzz run (schemathesis) that must find no server error; real PostgreSQL and Redis."""

from __future__ import annotations

import pytest
from django.core.management import call_command

from retrieval.tokens import issue_token
from tests.api.helpers import error_of, photo
from tests.factories import jpeg_bytes

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("no_search_throttle")]

SEARCH = "/api/v1/search/"
GARMENTS = "/api/v1/garments/"
CATEGORIES = "/api/v1/categories/"
HIT_FIELDS = {
    *("id", "sku", "title", "category", "colour", "image_url", "score"),
    *("gender", "season", "usage"),
}


# --------------------------------------------------------------------------- errors, CORS, schema


def test_unknown_api_urls_answer_the_json_error_shape(anon):
    error = error_of(anon.get("/api/v1/nope/"), 404, "not_found")
    assert "/api/v1/nope/" in error["message"]
    error_of(anon.put(SEARCH, {}, format="json"), 405, "method_not_allowed")


def test_unexpected_errors_answer_500_in_the_json_shape(anon, monkeypatch, caplog):
    """Fault injection: the search layer fails unexpectedly."""
    from retrieval import search

    def broken(**kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(search, "search_photo", broken)
    response = anon.post(SEARCH, {"image": photo(jpeg_bytes())}, format="multipart")
    error = error_of(response, 500, "server_error")
    assert "disk on fire" not in error["message"]  # no internals leak to clients
    assert any("disk on fire" in str(r.exc_info[1]) for r in caplog.records if r.exc_info)


def test_cors_is_off_by_default_and_allows_listed_origins(anon, settings):
    origin = "https://app.example.com"
    response = anon.get(CATEGORIES, HTTP_ORIGIN=origin)
    assert "Access-Control-Allow-Origin" not in response
    settings.CORS_ALLOWED_ORIGINS = [origin]
    response = anon.get(CATEGORIES, HTTP_ORIGIN=origin)
    assert response["Access-Control-Allow-Origin"] == origin
    preflight = anon.options(
        SEARCH,
        HTTP_ORIGIN=origin,
        HTTP_ACCESS_CONTROL_REQUEST_METHOD="POST",
        HTTP_ACCESS_CONTROL_REQUEST_HEADERS="authorization,content-type",
    )
    assert preflight.status_code == 200
    assert preflight["Access-Control-Allow-Origin"] == origin
    assert "authorization" in preflight["Access-Control-Allow-Headers"]
    # Only the API answers cross-origin.
    assert "Access-Control-Allow-Origin" not in anon.get("/", HTTP_ORIGIN=origin)
    other = anon.get(CATEGORIES, HTTP_ORIGIN="https://evil.example.net")
    assert "Access-Control-Allow-Origin" not in other


def test_openapi_schema_is_valid_and_describes_every_endpoint(anon, tmp_path):
    response = anon.get("/api/v1/schema/", {"format": "json"})
    assert response.status_code == 200
    schema = response.json()
    assert schema["openapi"].startswith("3.")
    assert {
        "/api/v1/search/",
        "/api/v1/garments/",
        "/api/v1/garments/{id}/",
        "/api/v1/garments/{id}/similar/",
        "/api/v1/categories/",
        "/api/v1/categories/{id}/",
    } <= set(schema["paths"])
    search_body = schema["paths"]["/api/v1/search/"]["post"]["requestBody"]["content"]
    assert set(search_body) == {"multipart/form-data", "application/json"}
    assert "Error" in schema["components"]["schemas"]
    # drf-spectacular's own validation (OpenAPI 3 JSON schema), warnings are failures.
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(tmp_path / "s.yml"))


@pytest.mark.parametrize("page", ["/api/v1/docs/", "/api/v1/redoc/"])
def test_interactive_docs_use_local_assets_only(anon, page):
    from django.contrib.staticfiles import finders

    response = anon.get(page)
    assert response.status_code == 200
    html = response.content.decode()
    assert "/static/drf_spectacular_sidecar/" in html
    assert "cdn." not in html and "unpkg" not in html
    bundle = (
        "swagger-ui-dist/swagger-ui-bundle.js"
        if "docs" in page
        else "redoc/bundles/redoc.standalone.js"
    )
    assert finders.find(f"drf_spectacular_sidecar/{bundle}")


# --------------------------------------------------------------------------- fuzzing


@pytest.fixture
def wsgi_app():
    """Django's WSGI app, called in this test's transaction (as Django's test client does:
    without closing the connection at the end of each request)."""
    from django.core import signals
    from django.core.wsgi import get_wsgi_application
    from django.db import close_old_connections

    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    try:
        yield get_wsgi_application()
    finally:
        signals.request_started.connect(close_old_connections)
        signals.request_finished.connect(close_old_connections)


@pytest.mark.slow
def test_schema_driven_fuzzing_finds_no_server_error(
    trained_catalogue, wsgi_app, django_user_model
):
    """schemathesis generates requests from the OpenAPI schema (valid and invalid ones) for every
    operation, as staff (the widest access), and checks each answer: no 5xx, the documented
    status codes, content types, headers and bodies, invalid input refused, auth enforced.

    Not checked: "positive data acceptance" (every schema-valid request answered 2xx). A schema
    cannot say "these bytes must decode as a photo" or "this category id must exist", so valid
    looking requests are rightly refused with 400 here.
    """
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode
    from schemathesis.specs.openapi.checks import positive_data_acceptance

    staff_user = django_user_model.objects.create_user("fuzzer", password="pw", is_staff=True)
    headers = {"Authorization": f"Token {issue_token(user=staff_user).key}"}
    schema = schemathesis.openapi.from_wsgi("/api/v1/schema/?format=json", wsgi_app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 12
    calls: dict[str, int] = {}
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=20,
                deadline=None,
                database=None,
                derandomize=True,
                suppress_health_check=list(HealthCheck),
            )
            def check(case):
                case.call_and_validate(headers=headers, excluded_checks=[positive_data_acceptance])
                calls[case.operation.label] = calls.get(case.operation.label, 0) + 1

            try:
                check()
            except Unsatisfiable:  # nothing of the operation can be made schema-invalid
                assert mode is GenerationMode.NEGATIVE
    assert set(calls) == {operation.label for operation in operations}
