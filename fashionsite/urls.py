"""URL routes: the shoppers' site, the admin, the health probe and (later) the REST API."""

from django.conf import settings
from django.contrib import admin
from django.urls import path, re_path
from django.views.static import serve

from retrieval import views

urlpatterns = [
    path("", views.home, name="home"),
    path("healthz", views.healthz, name="healthz"),
    path("admin/", admin.site.urls),
]

if settings.DEBUG:
    urlpatterns += [
        re_path(r"^media/(?P<path>.*)$", serve, {"document_root": settings.MEDIA_ROOT}),
    ]
