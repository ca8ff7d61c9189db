"""The admin's lockout page in a real browser (issue #17, point 7): after the failures, the
right password shows why sign-in is refused and when to come back; once an administrator
resets the lock, the same sign-in works."""

from __future__ import annotations

import pytest
from django.core.management import call_command

from tests.web.test_browser import page  # noqa: F401 - fixture used below

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PASSWORD = "a-Good-pa55word"


def sign_in(page, site: str, password: str) -> None:  # noqa: F811
    page.goto(f"{site}/admin/login/?next=/admin/")
    page.fill("#id_username", "boss")
    page.fill("#id_password", password)
    page.locator("input[type=submit]").click()


def test_a_locked_out_admin_sees_why_and_can_sign_in_once_reset(
    page,  # noqa: F811
    live_server,
    settings,
    django_user_model,
):
    from playwright.sync_api import expect

    settings.DJANGO_LOGIN_FAILURE_LIMIT = 3
    settings.DJANGO_LOGIN_COOLOFF_MINUTES = 15
    django_user_model.objects.create_user("boss", password=PASSWORD, is_staff=True)
    site = live_server.url
    sign_in(page, site, "wrong-1")
    expect(page.locator(".errornote")).to_contain_text("Please enter the correct username")
    sign_in(page, site, "wrong-2")
    sign_in(page, site, "wrong-3")
    expect(page.locator("#locked-out")).to_contain_text("Too many failed sign-ins")

    sign_in(page, site, PASSWORD)
    expect(page.locator("#locked-out")).to_be_visible()
    expect(page.locator("#content-main")).to_contain_text("Try again in 15 minutes")
    assert "/admin/login/" in page.url

    call_command("axes_reset_username", "boss")
    sign_in(page, site, PASSWORD)
    page.wait_for_url(f"{site}/admin/")
    expect(page.locator("#user-tools")).to_contain_text("boss".upper(), ignore_case=True)
