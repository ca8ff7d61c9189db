"""Saving a garment (catalogue.save_garment) queues its indexing after the commit: a real
worker process indexes it."""

from __future__ import annotations

import pytest
from django.core.files.base import ContentFile

from retrieval import catalogue
from retrieval.models import BackboneFeature, Garment
from tests.conftest import wait_until
from tests.factories import CategoryFactory, jpeg_bytes


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_upload_is_indexed_by_a_worker_after_commit(celery_worker):
    category = CategoryFactory(name="Jackets")
    garment = Garment(sku="U1", title="Upload", category=category, colour="Blue")
    garment.image.save("u1.jpg", ContentFile(jpeg_bytes((0, 0, 200))), save=False)
    catalogue.save_garment(garment=garment, image_changed=True)
    assert wait_until(lambda: Garment.objects.get(pk=garment.pk).status == Garment.Status.READY)
    assert BackboneFeature.objects.filter(garment=garment).count() == 1
