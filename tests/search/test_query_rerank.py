"""The category re-rank on the real search path (the trained catalogue): the predicted
category first, an identical photo first whatever the head predicts."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.mark.slow
@pytest.mark.django_db
def test_category_rerank_lists_the_predicted_category_first(trained_catalogue, settings):
    from retrieval import features, search
    from retrieval.models import Garment

    model = search.require_active_model()
    extractor = features.extractor_for(backbone=model.backbone, model=model)

    def predict(photo: bytes) -> str:
        probs = extractor.extract_query(
            [photo], flip=settings.RETRIEVAL_QUERY_FLIP, crop=settings.RETRIEVAL_QUERY_CROP
        )["probs"][0]
        return model.classes[int(np.argmax(probs))]

    tshirts = Garment.objects.filter(
        pk__in=trained_catalogue.ids[Garment], category__slug="tshirts"
    ).order_by("sku")
    photos = {g.pk: g.image.read() for g in tshirts[:40]}
    predictions = {pk: predict(photo) for pk, photo in photos.items()}
    garment = next(g for g in tshirts if predictions.get(g.pk) == "Tshirts")
    photo = photos[garment.pk]
    predicted = predictions[garment.pk]
    in_category = Garment.objects.filter(
        category__name=predicted, status=Garment.Status.READY
    ).count()

    settings.RETRIEVAL_RERANK = "none"
    plain = search.search_image(image=photo, top=20)
    settings.RETRIEVAL_RERANK = "category"
    reranked = search.search_image(image=photo, top=20)
    categories = [g.category.name for g, _ in reranked.garments()]
    assert len(categories) == 20
    # A catalogue photo still finds its own garment first (its category is predicted).
    assert predicted == garment.category.name
    assert reranked.hits[0].garment_id == garment.pk
    head = min(20, in_category)
    assert categories[:head] == [predicted] * head
    assert predicted not in categories[head:]
    # Within the predicted category the order is the plain one (nearest first).
    scores = [h.score for h in reranked.hits[:head]]
    assert scores == sorted(scores, reverse=True)
    # Below the confidence threshold the ranking is the paper's.
    settings.RETRIEVAL_RERANK_MIN_CONFIDENCE = 1.01
    unsure = search.search_image(image=photo, top=20)
    assert [h.garment_id for h in unsure.hits] == [h.garment_id for h in plain.hits]
    # The deep-only baseline and a category filter are never re-ranked.
    settings.RETRIEVAL_RERANK_MIN_CONFIDENCE = 0.0
    deep = search.search_image(image=photo, top=20, mode="deep")
    settings.RETRIEVAL_RERANK = "none"
    assert [h.garment_id for h in deep.hits] == [
        h.garment_id for h in search.search_image(image=photo, top=20, mode="deep").hits
    ]


@pytest.mark.slow
@pytest.mark.django_db
def test_category_rerank_keeps_an_identical_photo_first_whatever_the_head_predicts(
    trained_catalogue,
):
    """A catalogue photo searched again comes back first with score 0 (issue #5), even when
    the head predicts another category for it; that category's garments follow."""
    from retrieval import search
    from retrieval.models import Garment, GarmentFeature
    from retrieval.search import rerank

    model = search.require_active_model()
    garment = (
        Garment.objects.filter(pk__in=trained_catalogue.ids[Garment], category__slug="tshirts")
        .order_by("sku")
        .first()
    )
    fused = np.asarray(
        GarmentFeature.objects.get(model=model, garment=garment).fused, dtype=np.float32
    )
    wrong = next(name for name in model.classes if name != garment.category.name)
    probs = np.zeros(len(model.classes), np.float32)
    probs[model.classes.index(wrong)] = 1.0
    result = rerank.search_reranked(fused=fused, probs=probs, model=model, top=10)
    assert len(result.hits) == 10
    assert result.hits[0].garment_id == garment.pk
    assert result.hits[0].score == pytest.approx(0.0, abs=1e-5)
    in_wrong = Garment.objects.filter(category__name=wrong, status=Garment.Status.READY).count()
    names = [g.category.name for g, _ in result.garments()]
    head = min(9, in_wrong)
    assert names[1 : 1 + head] == [wrong] * head
