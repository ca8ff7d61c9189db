"""factory_boy factories: real rows in the real test database."""

from __future__ import annotations

import io

import factory
import numpy as np
from django.core.files.base import ContentFile
from PIL import Image

from retrieval.models import (
    Category,
    ClusterCentroid,
    ClusterRun,
    FeatureModel,
    Garment,
    GarmentFeature,
)


def jpeg_bytes(colour=(200, 30, 30), size=(60, 80), *, pattern: bool = False) -> bytes:
    """A small studio-style JPEG: a coloured garment-ish block on white."""
    image = Image.new("RGB", size, (255, 255, 255))
    w, h = size
    block = Image.new("RGB", (w // 2, h // 2), colour)
    image.paste(block, (w // 4, h // 4))
    if pattern:
        for x in range(w // 4, 3 * w // 4, 4):
            for y in range(h // 4, 3 * h // 4):
                image.putpixel((x, y), (0, 0, 0))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=92)
    return buffer.getvalue()


def distinct_jpeg(n: int, size=(60, 80)) -> bytes:
    """The ``n``-th of a series of studio-style JPEGs (0 <= n < 256) whose decoded pixels all
    differ: several garments made from one flat photo are exact duplicates, which uploads and
    imports refuse (issue #16). The block's colour steps through every channel (odd strides
    mod 256, so no two ``n`` share a channel value) far enough that JPEG cannot merge them."""
    return jpeg_bytes(((37 * n + 11) % 256, (91 * n + 50) % 256, (53 * n + 90) % 256), size)


class CategoryFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Category
        django_get_or_create = ("name",)

    name = factory.Sequence(lambda n: f"Category {n}")


class GarmentFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Garment

    sku = factory.Sequence(lambda n: f"SKU{n:06d}")
    title = factory.LazyAttribute(lambda o: f"Garment {o.sku}")
    category = factory.SubFactory(CategoryFactory)
    colour = "Red"
    image = factory.LazyAttribute(lambda o: ContentFile(jpeg_bytes(), name=f"{o.sku}.jpg"))
    status = Garment.Status.READY


class FeatureModelFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = FeatureModel

    name = factory.Sequence(lambda n: f"test-model-{n}")
    backbone = "efficientnet_lite0"
    backbone_dim = 1280
    colour_variant = "lab_mean"
    colour_weight = 0.6
    status = FeatureModel.Status.READY
    active = True


def add_vectors(model: FeatureModel, garments, fused: np.ndarray) -> None:
    """Store given fused vectors (N, 542) for garments; deep = the first 512 values."""
    GarmentFeature.objects.bulk_create(
        GarmentFeature(garment=g, model=model, deep=fused[i, :512], fused=fused[i])
        for i, g in enumerate(garments)
    )


def add_cluster_run(
    model: FeatureModel, centroids: np.ndarray, labels_by_garment: dict, *, space: str = "fused"
) -> ClusterRun:
    """An active K-means run with given centroids (k, 542 or 512) and {garment_id: label},
    switched in the way a fitted run is (its search partition written, then activated)."""
    from retrieval.search import clustering

    run = ClusterRun.objects.create(
        model=model, space=space, k=len(centroids), n_samples=len(labels_by_garment)
    )
    ClusterCentroid.objects.bulk_create(
        ClusterCentroid(run=run, label=i, centroid=c) for i, c in enumerate(centroids)
    )
    feature_of = dict(
        GarmentFeature.objects.filter(
            model=model, garment_id__in=list(labels_by_garment)
        ).values_list("garment_id", "id")
    )
    garment_ids = [g for g in labels_by_garment if g in feature_of]
    clustering.switch_run(
        run=run,
        feature_ids=np.asarray([feature_of[g] for g in garment_ids], dtype=np.int64),
        labels=np.asarray([labels_by_garment[g] for g in garment_ids], dtype=np.int64),
    )
    run.refresh_from_db()
    return run


def grant_catalogue_permissions(user) -> None:
    """Give a staff user the garment and category permissions (a curator): the API's writes
    check model permissions (DjangoModelPermissions), not only is_staff."""
    from django.contrib.auth.models import Permission

    user.user_permissions.add(
        *Permission.objects.filter(
            content_type__app_label="retrieval", content_type__model__in=["garment", "category"]
        )
    )
