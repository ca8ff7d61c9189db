"""Background work: publishing tasks (:mod:`.publishing`, imported by services) and the Celery
tasks themselves (:mod:`.tasks`, which call services). This module imports neither, so a
service may import :mod:`.publishing` without importing the tasks."""
