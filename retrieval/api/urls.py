"""API routes (/api/v1/...)."""

from __future__ import annotations

from django.urls import path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView
from rest_framework.routers import DefaultRouter

from retrieval.api.views import CategoryViewSet, GarmentViewSet, SearchStatsView, SearchView

router = DefaultRouter(trailing_slash=True)
router.include_root_view = False
router.register("garments", GarmentViewSet, basename="garment")
router.register("categories", CategoryViewSet, basename="category")

# Mounted under /api/v1/ with the namespace "api" (fashionsite/urls.py).
urlpatterns = [
    path("search/", SearchView.as_view(), name="search"),
    path("stats/searches/", SearchStatsView.as_view(), name="search-stats"),
    *router.urls,
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="api:schema"), name="docs"),
    path("redoc/", SpectacularRedocView.as_view(url_name="api:schema"), name="redoc"),
]
