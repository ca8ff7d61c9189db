"""The search by photo applies RETRIEVAL_QUERY_CROP (the trained catalogue): a snapshot on a
wooden floor is searched as its middle 80%, a catalogue photo on white as itself."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image


def on_wooden_floor(garment: Image.Image, size=(300, 400)) -> Image.Image:
    """A catalogue photo pasted in the middle of generated planks (several browns, grain)."""
    w, h = size
    rng = np.random.default_rng(3)
    tones = np.array([(150, 100, 55), (190, 140, 85), (115, 75, 40), (170, 125, 70)])
    plank = (np.arange(w) // 30) % len(tones)
    floor = tones[plank][None].repeat(h, axis=0) + rng.integers(-10, 11, (h, w, 3))
    img = Image.fromarray(np.clip(floor, 0, 255).astype(np.uint8))
    img.paste(garment.resize((w * 3 // 5, h * 3 // 5)), (w // 5, h // 5))
    return img


def hits(result) -> list[tuple[int, float]]:
    return [(h.garment_id, round(h.score, 4)) for h in result.hits]


@pytest.mark.slow
@pytest.mark.django_db
def test_search_by_photo_uses_the_configured_crop(trained_catalogue, settings):
    from retrieval import search
    from retrieval.models import Garment

    garment = Garment.objects.filter(pk__in=trained_catalogue.ids[Garment]).order_by("sku")[0]
    studio = garment.image.read()
    snapshot = on_wooden_floor(Image.open(io.BytesIO(studio)).convert("RGB"))
    centre = snapshot.crop((30, 40, 270, 360))  # 10% off each side of 300x400

    settings.RETRIEVAL_QUERY_CROP = "off"
    whole = search.search_image(image=snapshot, top=10, mode="exact")
    cropped_by_hand = search.search_image(image=centre, top=10, mode="exact")
    studio_off = search.search_image(image=studio, top=10, mode="exact")
    settings.RETRIEVAL_QUERY_CROP = "centre"
    by_setting = search.search_image(image=snapshot, top=10, mode="exact")
    studio_centre = search.search_image(image=studio, top=10, mode="exact")

    assert hits(by_setting) == hits(cropped_by_hand)
    assert hits(by_setting) != hits(whole)  # the crop changed the query
    assert hits(studio_centre) == hits(studio_off)  # a photo on white is not cropped
    assert studio_centre.hits[0].garment_id == garment.pk
