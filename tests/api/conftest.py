"""The API tests' clients (anonymous, staff curator with a token, signed-in shopper), their query
garment, and fresh search caches: keyword vocabulary and filter values are cached per process
(retrieval.search.keyword, .filters); each test starts without another test's catalogue there."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from retrieval.models import Garment
from tests.api.helpers import client_with_token
from tests.search_caches import fresh_search_caches  # noqa: F401 - autouse


@pytest.fixture
def anon() -> APIClient:
    return APIClient()


@pytest.fixture
def staff(django_user_model) -> APIClient:
    from django.contrib.auth.models import Permission

    user = django_user_model.objects.create_user("curator", password="pw-x", is_staff=True)
    # Writes check the model permissions (DjangoModelPermissions): a curator holds them.
    user.user_permissions.set(
        Permission.objects.filter(
            content_type__app_label="retrieval", content_type__model__in=["garment", "category"]
        )
    )
    return client_with_token(user)


@pytest.fixture
def shopper(django_user_model) -> APIClient:
    return client_with_token(django_user_model.objects.create_user("shopper", password="pw-y"))


@pytest.fixture
def query(trained_catalogue) -> Garment:
    """A T-shirt of the trained catalogue (its biggest category), and so its cluster."""
    return (
        Garment.objects.filter(pk__in=trained_catalogue.ids[Garment], category__slug="tshirts")
        .select_related("category")
        .order_by("sku")
        .first()
    )
