"""The fashionsite Django project. Importing it loads the Celery app (``@shared_task`` binds)."""

from fashionsite.celery import app as celery_app

__all__ = ("celery_app",)
