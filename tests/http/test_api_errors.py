"""Under /api/ every error is JSON in the API's error shape, with DEBUG on or off (issue #17, 3)."""

from __future__ import annotations

import pytest
from django.http import HttpRequest, HttpResponse
from django.test import Client

pytestmark = pytest.mark.django_db


def assert_json_error(response, status: int, code: str) -> None:
    assert response.status_code == status
    assert response["Content-Type"] == "application/json"
    body = response.json()
    assert body["error"]["code"] == code
    assert set(body["error"]) == {"code", "message", "details"}
    # Neither the URL patterns (DEBUG's 404 page) nor a traceback (DEBUG's 500 page).
    assert b"urlpatterns" not in response.content
    assert b"Traceback" not in response.content


@pytest.mark.parametrize("debug", [True, False])
def test_an_unknown_api_url_answers_json_404(settings, debug):
    settings.DEBUG = debug
    assert_json_error(Client().get("/api/nothing/here"), 404, "not_found")
    assert_json_error(Client().get("/api/v1/nothing/"), 404, "not_found")


@pytest.mark.parametrize("debug", [True, False])
def test_a_refused_method_answers_json_405_with_allow(settings, debug):
    settings.DEBUG = debug
    response = Client().delete("/api/v1/search/")
    assert_json_error(response, 405, "method_not_allowed")
    assert "POST" in response["Allow"]


class Exploding:
    """A middleware that fails on /api/: Django answers such a failure outside any DRF view."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path.startswith("/api/"):
            raise RuntimeError("boom in a middleware")
        return self.get_response(request)


@pytest.mark.parametrize("debug", [True, False])
def test_a_failure_outside_the_api_views_answers_json_500(settings, debug):
    settings.DEBUG = debug
    settings.MIDDLEWARE = [*settings.MIDDLEWARE, f"{__name__}.Exploding"]
    client = Client(raise_request_exception=False)
    assert_json_error(client.get("/api/v1/categories/"), 500, "server_error")
    # Elsewhere the shop's page stays a page.
    assert client.get("/").status_code == 200


def test_outside_the_api_an_unknown_url_is_the_shops_page(settings):
    settings.DEBUG = False
    response = Client().get("/no/such/page/")
    assert response.status_code == 404
    assert response["Content-Type"].startswith("text/html")
