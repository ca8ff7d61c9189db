"""API tokens stored hashed (issue #17, point 7): a token works as ``Authorization: Token <key>``,
its row holds no plain text, a wrong one is 401; only superusers see tokens in the admin (and
never their secret); tokens are shown once when issued; DRF authtoken's plain keys are hashed by
migration 0009 and keep working."""

from __future__ import annotations

import hashlib
import io

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from rest_framework.test import APIClient

from retrieval.models import ApiToken, Category
from retrieval.tokens import issue_token
from tests.factories import grant_catalogue_permissions

pytestmark = pytest.mark.django_db

CATEGORIES = "/api/v1/categories/"


def with_token(key: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return client


def create_category(client: APIClient, name: str):
    return client.post(CATEGORIES, {"name": name}, format="json")


@pytest.fixture
def staff_user(django_user_model):
    user = django_user_model.objects.create_user("curator", password="pw-x", is_staff=True)
    grant_catalogue_permissions(user)
    return user


def stored_row(token: ApiToken) -> str:
    """Every column of the token's row, as PostgreSQL returns it."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT t::text FROM {ApiToken._meta.db_table} t WHERE id = %s",
            [token.pk],
        )
        return cursor.fetchone()[0]


def test_a_token_works_and_its_row_holds_no_plain_text(staff_user):
    issued = issue_token(user=staff_user)
    response = create_category(with_token(issued.key), "Tops")
    assert response.status_code == 201, response.content
    assert Category.objects.filter(name="Tops").exists()

    row = stored_row(issued.token)
    assert issued.key not in row
    assert issued.key[8:16] not in row  # no part past the prefix either
    token = ApiToken.objects.get(pk=issued.token.pk)
    assert token.digest == hashlib.sha256(issued.key.encode()).hexdigest()
    assert token.prefix == issued.key[:8]
    assert token.last_used_at is not None


def test_a_wrong_token_is_401(staff_user):
    issued = issue_token(user=staff_user)
    for key in (
        issued.key[:-1] + ("A" if issued.key[-1] != "A" else "B"),  # same prefix, other secret
        issued.token.digest,  # the stored digest is not a key
        issued.key[:8],
        "x",
    ):
        response = create_category(with_token(key), f"C-{key[:4]}")
        assert response.status_code == 401, key
        assert response.json()["error"]["code"] == "authentication_failed"
        assert response["WWW-Authenticate"] == "Token"
    assert not Category.objects.exists()


def test_an_inactive_user_s_token_is_refused(staff_user):
    issued = issue_token(user=staff_user)
    staff_user.is_active = False
    staff_user.save()
    assert create_category(with_token(issued.key), "Tops").status_code == 401


def test_create_token_prints_a_new_key_once_and_replace_revokes_the_others(staff_user):
    old = issue_token(user=staff_user)
    out, err = io.StringIO(), io.StringIO()
    call_command("create_token", "curator", stdout=out, stderr=err)
    key = out.getvalue().strip()
    assert create_category(with_token(key), "Tops").status_code == 201
    assert "shown once" in err.getvalue()
    assert key not in "".join(stored_row(t) for t in ApiToken.objects.all())
    assert create_category(with_token(old.key), "Shoes").status_code == 201  # both valid

    out = io.StringIO()
    call_command("create_token", "curator", "--replace", stdout=out, stderr=io.StringIO())
    newest = out.getvalue().strip()
    assert ApiToken.objects.filter(user=staff_user).count() == 1
    assert create_category(with_token(key), "Bags").status_code == 401
    assert create_category(with_token(newest), "Bags").status_code == 201

    with pytest.raises(CommandError, match="no user"):
        call_command("create_token", "nobody", stdout=io.StringIO())


def test_only_superusers_see_tokens_in_the_admin_and_never_the_secret(
    client, admin_client, django_user_model, staff_user
):
    issued = issue_token(user=staff_user)
    page = admin_client.get("/admin/retrieval/apitoken/")
    assert page.status_code == 200
    text = page.content.decode()
    assert issued.token.prefix in text
    assert issued.key not in text and issued.token.digest not in text
    detail = admin_client.get(f"/admin/retrieval/apitoken/{issued.token.pk}/change/").content
    assert issued.token.digest.encode() not in detail and issued.key.encode() not in detail
    assert admin_client.get("/admin/retrieval/apitoken/add/").status_code == 403

    # Staff with every permission on tokens and users, but not superuser: nothing.
    from django.contrib.auth.models import Permission

    curator = django_user_model.objects.create_user("staff2", password="pw-y", is_staff=True)
    curator.user_permissions.set(
        Permission.objects.filter(content_type__app_label__in=["retrieval", "auth"])
    )
    client.force_login(curator)
    assert client.get("/admin/retrieval/apitoken/").status_code == 403
    assert client.get(f"/admin/retrieval/apitoken/{issued.token.pk}/change/").status_code == 403
    assert "API tokens" not in client.get("/admin/").content.decode()
    users = client.get("/admin/auth/user/")
    assert users.status_code == 200 and "issue_api_token" not in users.content.decode()
    response = client.post(
        "/admin/auth/user/", {"action": "issue_api_token", "_selected_action": [curator.pk]}
    )
    assert ApiToken.objects.filter(user=curator).count() == 0, response.status_code


def test_a_superuser_issues_tokens_from_the_users_list_shown_once(admin_client, staff_user):
    assert "issue_api_token" in admin_client.get("/admin/auth/user/").content.decode()
    response = admin_client.post(
        "/admin/auth/user/", {"action": "issue_api_token", "_selected_action": [staff_user.pk]}
    )
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    [token] = ApiToken.objects.filter(user=staff_user)
    text = response.content.decode()
    start = text.index('class="token-key">') + len('class="token-key">')
    key = text[start : text.index("<", start)]
    assert key.startswith(token.prefix)
    assert create_category(with_token(key), "Tops").status_code == 201
    # Not shown again anywhere.
    for page in ("/admin/retrieval/apitoken/", f"/admin/retrieval/apitoken/{token.pk}/change/"):
        assert key not in admin_client.get(page).content.decode()


def test_migration_0009_hashes_drf_authtoken_keys_and_drops_them(django_user_model):
    """A site upgraded from DRF authtoken: its clients' keys keep working, no plain key is left."""
    user = django_user_model.objects.create_user("legacy", password="pw-z", is_staff=True)
    grant_catalogue_permissions(user)
    before = [("retrieval", "0008_garment_attributes")]
    MigrationExecutor(connection).migrate(before)
    key = "401f7ac837da42b97f613d789819ff93537bee6a"  # DRF's format: 40 hex characters
    with connection.cursor() as cursor:
        # authtoken's table as its migrations left it, and their records.
        cursor.execute(
            "CREATE TABLE authtoken_token (key varchar(40) PRIMARY KEY, created timestamptz "
            "NOT NULL, user_id integer NOT NULL UNIQUE REFERENCES auth_user (id))"
        )
        cursor.execute(
            "INSERT INTO authtoken_token VALUES (%s, '2024-05-01T10:00:00Z', %s)", [key, user.pk]
        )
        cursor.execute(
            "INSERT INTO django_migrations (app, name, applied) VALUES "
            "('authtoken', '0001_initial', now()), ('authtoken', '0002_auto_20160226_1747', now())"
        )
    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())

    [token] = ApiToken.objects.filter(user=user)
    assert token.prefix == key[:8]
    assert token.created_at.isoformat().startswith("2024-05-01T10:00:00")
    assert key not in stored_row(token)
    assert "authtoken_token" not in connection.introspection.table_names()
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM django_migrations WHERE app = 'authtoken'")
        assert cursor.fetchone()[0] == 0
    assert create_category(with_token(key), "Tops").status_code == 201
