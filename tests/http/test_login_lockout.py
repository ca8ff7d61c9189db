"""Login lockout (issue #17, point 7): after DJANGO_LOGIN_FAILURE_LIMIT failed admin logins for
an account or from an address, sign-in is refused, the right password included, until the
cool-off has passed or an administrator resets it (django-axes, counted in the database).

Isolation: axes counts in its AccessAttempt table, which each test's transaction rolls back, so
no test sees another's failures (and tests that sign in with force_login bypass it entirely).
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from axes.models import AccessAttempt
from django.core.management import call_command
from django.test import Client, RequestFactory
from django.utils import timezone

from retrieval.checks import check_minimums
from retrieval.http.lockout import lockout_response

pytestmark = pytest.mark.django_db

LOGIN = "/admin/login/"
PASSWORD = "the-right-Pa55word"


@pytest.fixture
def staff(django_user_model):
    def make(username: str):
        return django_user_model.objects.create_user(username, password=PASSWORD, is_staff=True)

    return make


def login(username: str, password: str, *, address: str = "127.0.0.1", **headers):
    """One admin login attempt from ``address``; the response and the client (for its session)."""
    client = Client(REMOTE_ADDR=address, **headers)
    response = client.post(LOGIN, {"username": username, "password": password, "next": "/admin/"})
    return response, client


def signed_in(response, client) -> bool:
    return response.status_code == 302 and client.get("/admin/").status_code == 200


def test_forty_wrong_passwords_then_the_right_one_are_refused(staff):
    staff("boss")
    statuses = [login("boss", f"wrong-{i}")[0].status_code for i in range(40)]
    # The login form's error up to the limit (default 10: the 10th failure locks), then 429.
    assert statuses[:9] == [200] * 9
    assert set(statuses[9:]) == {429}
    response, client = login("boss", PASSWORD)
    assert response.status_code == 429
    assert not signed_in(response, client)
    assert client.get("/admin/").status_code == 302  # to the login page: no session


def test_the_locked_out_page_says_why_and_when_to_come_back(staff, settings):
    settings.DJANGO_LOGIN_FAILURE_LIMIT = 2
    settings.DJANGO_LOGIN_COOLOFF_MINUTES = 20
    staff("boss")
    login("boss", "wrong")
    response, _ = login("boss", "wrong")
    assert response.status_code == 429
    assert response["Retry-After"] == str(20 * 60)
    page = response.content.decode()
    assert 'id="locked-out"' in page
    assert "Too many failed sign-ins" in page
    assert "Try again in 20 minutes" in page
    assert "fashionsite admin" in page  # the admin's frame (branded, issue #16)


def test_an_address_is_locked_across_accounts(staff, settings):
    settings.DJANGO_LOGIN_FAILURE_LIMIT = 3
    staff("alice")
    staff("bob")
    for name in ("x1", "x2", "alice"):  # one failure each, unknown accounts count too
        assert login(name, "wrong", address="10.0.0.1")[0].status_code in (200, 429)
    # bob never failed, but the address did: refused there, accepted from elsewhere.
    response, client = login("bob", PASSWORD, address="10.0.0.1")
    assert response.status_code == 429 and not signed_in(response, client)
    assert signed_in(*login("bob", PASSWORD, address="10.0.0.2"))


def test_an_account_is_locked_across_addresses(staff, settings):
    settings.DJANGO_LOGIN_FAILURE_LIMIT = 3
    staff("alice")
    staff("bob")
    for i in range(3):  # a botnet: one guess per address
        login("alice", "wrong", address=f"10.0.1.{i}")
    # A fresh address with the right password: the account is locked.
    response, client = login("alice", PASSWORD, address="10.0.1.200")
    assert response.status_code == 429 and not signed_in(response, client)
    # The address is not: another account signs in from it.
    assert signed_in(*login("bob", PASSWORD, address="10.0.1.200"))


def test_the_address_is_the_client_s_behind_a_proxy(staff, settings):
    """DJANGO_NUM_PROXIES=1: the address is X-Forwarded-For's last, as for the throttles; the
    proxy's own address (every request's REMOTE_ADDR) is not locked."""
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "NUM_PROXIES": 1}
    settings.DJANGO_LOGIN_FAILURE_LIMIT = 2
    staff("alice")
    staff("bob")
    proxy = "10.9.9.9"
    for name in ("x1", "x2"):
        login(name, "wrong", address=proxy, HTTP_X_FORWARDED_FOR="203.0.113.7")
    locked, _ = login("bob", PASSWORD, address=proxy, HTTP_X_FORWARDED_FOR="203.0.113.7")
    assert locked.status_code == 429
    assert set(AccessAttempt.objects.values_list("ip_address", flat=True)) == {"203.0.113.7"}
    assert signed_in(*login("bob", PASSWORD, address=proxy, HTTP_X_FORWARDED_FOR="203.0.113.8"))


def test_a_forwarded_value_that_is_no_address_counts_against_the_connection(staff, settings):
    """A client reaching gunicorn past the proxy with its own X-Forwarded-For: not a 500, and
    its failures count against its connection's address."""
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "NUM_PROXIES": 1}
    settings.DJANGO_LOGIN_FAILURE_LIMIT = 2
    staff("bob")
    for forwarded in ("not-an-address", "<script>"):
        response, _ = login("x", "wrong", address="10.7.7.7", HTTP_X_FORWARDED_FOR=forwarded)
        assert response.status_code in (200, 429)
    assert set(AccessAttempt.objects.values_list("ip_address", flat=True)) == {"10.7.7.7"}
    assert (
        login("bob", PASSWORD, address="10.7.7.7", HTTP_X_FORWARDED_FOR="junk")[0].status_code
        == 429
    )


def test_the_lock_ends_after_the_cool_off(staff, settings):
    settings.DJANGO_LOGIN_FAILURE_LIMIT = 2
    settings.DJANGO_LOGIN_COOLOFF_MINUTES = 15
    staff("boss")
    login("boss", "wrong")
    login("boss", "wrong")
    assert login("boss", PASSWORD)[0].status_code == 429  # and restarts the cool-off
    # 14 minutes after the last failure: still locked.
    AccessAttempt.objects.update(attempt_time=timezone.now() - timedelta(minutes=14))
    assert login("boss", PASSWORD)[0].status_code == 429
    AccessAttempt.objects.update(attempt_time=timezone.now() - timedelta(minutes=16))
    assert signed_in(*login("boss", PASSWORD))


@pytest.mark.parametrize(
    ("command", "argument"), [("axes_reset_username", "boss"), ("axes_reset_ip", "127.0.0.1")]
)
def test_an_administrator_lifts_the_lock(staff, settings, command, argument):
    settings.DJANGO_LOGIN_FAILURE_LIMIT = 2
    staff("boss")
    login("boss", "wrong")
    login("boss", "wrong")
    assert login("boss", PASSWORD)[0].status_code == 429
    call_command(command, argument)
    assert signed_in(*login("boss", PASSWORD))


def test_the_api_answers_a_lockout_in_its_error_body(settings):
    """The API has no password login (it takes tokens); were one added, axes' lockout there
    answers like every API error."""
    settings.DJANGO_LOGIN_COOLOFF_MINUTES = 5
    request = RequestFactory().post("/api/v1/anything/")
    response = lockout_response(request, None, {"username": "boss"})
    assert response.status_code == 429
    assert response["Content-Type"] == "application/json"
    assert response["Retry-After"] == "300"
    body = json.loads(response.content)
    assert body["error"]["code"] == "locked_out"
    assert body["error"]["details"] == {"retry_after": 300}


def test_no_api_route_takes_a_password():
    """Point 7's "any API login": there is none to protect (tokens are issued by an admin)."""
    from django.urls import get_resolver

    def routes(resolver, prefix=""):
        for pattern in resolver.url_patterns:
            if hasattr(pattern, "url_patterns"):
                yield from routes(pattern, prefix + str(pattern.pattern))
            else:
                yield prefix + str(pattern.pattern), pattern.callback

    api = [(route, view) for route, view in routes(get_resolver()) if route.startswith("api/")]
    assert api
    for route, view in api:
        name = getattr(view, "__name__", "") + route
        assert not any(word in name.lower() for word in ("login", "token", "auth")), route


@pytest.mark.parametrize("name", ["DJANGO_LOGIN_FAILURE_LIMIT", "DJANGO_LOGIN_COOLOFF_MINUTES"])
def test_lockout_settings_below_one_are_check_errors(settings, name):
    setattr(settings, name, 0)
    errors = [e for e in check_minimums() if e.id == "retrieval.E006"]
    assert [name in e.msg for e in errors] == [True]
