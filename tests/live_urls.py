"""The browser tests' live server URLconf: the site's, plus media files as `make run` serves
them (DEBUG). The ``site`` fixture (tests/conftest.py) points ROOT_URLCONF here."""

from django.conf import settings
from django.urls import re_path
from django.views.static import serve

from fashionsite import urls as site_urls

urlpatterns = [
    *site_urls.urlpatterns,
    re_path(r"^media/(?P<path>.*)$", serve, {"document_root": settings.MEDIA_ROOT}),
]
handler404 = site_urls.handler404
handler500 = site_urls.handler500
