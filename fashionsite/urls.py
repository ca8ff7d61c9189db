"""URL routes: the shoppers' site, the admin, the health probe and the REST API."""

from django.conf import settings
from django.contrib import admin
from django.urls import include, path, re_path
from django.views.static import serve

from retrieval import api, views

urlpatterns = [
    path("", views.home, name="home"),
    path("healthz", views.healthz, name="healthz"),
    path("admin/", admin.site.urls),
    path("categories/", views.category_list, name="category-list"),
    path("categories/<slug:slug>/", views.category_detail, name="category-detail"),
    path("garments/<int:pk>/", views.garment_detail, name="garment-detail"),
    path("api/v1/", include((api.urlpatterns, "api"), namespace="api")),
]

if settings.DEBUG:
    urlpatterns += [
        re_path(r"^media/(?P<path>.*)$", serve, {"document_root": settings.MEDIA_ROOT}),
    ]

# JSON errors under /api/, the shop's pages elsewhere.
handler404 = "retrieval.views.page_not_found"
handler500 = "retrieval.views.server_error"
