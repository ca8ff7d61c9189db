"""URL routes: the shoppers' site, the admin, the health probe and the REST API."""

from django.conf import settings
from django.contrib import admin
from django.urls import include, path

from retrieval.api import urls as api_urls
from retrieval.web import views

urlpatterns = [
    path("", views.home, name="home"),
    path("healthz", views.healthz, name="healthz"),
    path("admin/", admin.site.urls),
    path("search/", views.keyword_search, name="keyword-search"),
    path("categories/", views.category_list, name="category-list"),
    path("categories/<slug:slug>/", views.category_detail, name="category-detail"),
    path("garments/<int:pk>/", views.garment_detail, name="garment-detail"),
    path("api/v1/", include((api_urls.urlpatterns, "api"), namespace="api")),
]

if settings.SERVE_MEDIA:
    # Garment photos only, through a view that refuses anything else (retrieval.web.views).
    urlpatterns += [path("media/<path:path>", views.media_file, name="media")]

# JSON errors under /api/, the shop's pages elsewhere.
handler404 = "retrieval.web.views.page_not_found"
handler500 = "retrieval.web.views.server_error"
