"""The REST API (/api/v1/): DRF views, serializers, errors, pagination and routes."""
