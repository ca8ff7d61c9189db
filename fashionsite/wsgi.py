"""WSGI entry point (gunicorn fashionsite.wsgi)."""

import os

from django.core.wsgi import get_wsgi_application

from fashionsite.embedded import ensure_services

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fashionsite.settings")
ensure_services()  # the embedded PostgreSQL and Redis (where their URLs are unset), var/
application = get_wsgi_application()

from retrieval.checks import exit_on_errors  # noqa: E402 - needs the apps loaded

exit_on_errors()  # a bad RETRIEVAL_* choice stops the server with one line per error
