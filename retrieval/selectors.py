"""Read helpers shared by every layer: the active model, what a user may see."""

from __future__ import annotations

from retrieval.models import (
    Category,
    FeatureModel,
    Garment,
)


def active_model() -> FeatureModel | None:
    return FeatureModel.objects.filter(active=True).first()


def visible_garments(user):
    """Garments a user may see: shoppers the indexed ones of active categories, staff all."""
    if user.is_staff:
        return Garment.objects.all()
    return Garment.objects.filter(status=Garment.Status.READY, category__active=True)


def visible_categories(user):
    """Categories a user may see: shoppers the active ones, staff all."""
    return Category.objects.all() if user.is_staff else Category.objects.filter(active=True)
