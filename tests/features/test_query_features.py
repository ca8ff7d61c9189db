"""Query-time steps for shoppers' photos (centre crop where the border is not plain, crop to
the garment, flip averaging): known answers on hand-made images and maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from retrieval import features as feat
from retrieval.features import framing


class PositionTrunk(nn.Module):
    """(N, 3, 224, 224) -> (N, 3, 7, 7): the image average-pooled to 7x7, the red channel
    weighted up and the green one down towards the right (weights 1 +- col/8, col -3..3).

    So a mirror image pools differently, while the channel mean (the activation map) of a
    grey photo is exactly flat and that of a coloured garment on a dark ground peaks on it.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        col = torch.arange(-3, 4, dtype=x.dtype, device=x.device).view(1, 1, 7) * 0.125
        weights = torch.stack([1 + col, 1 - col, torch.ones_like(col)], dim=1)  # (1, 3, 1, 7)
        return nn.functional.adaptive_avg_pool2d(x, 7) * weights


@pytest.fixture
def extractor() -> feat.FeatureExtractor:
    module = feat.Backbone(PositionTrunk(), name="fake", dim=3, mean=(0, 0, 0), std=(1, 1, 1))
    ex = feat.FeatureExtractor(module=module, colour_variant="lab_mean")
    rng = np.random.default_rng(0)
    head, _ = feat.train_head(
        rng.normal(size=(40, 3)).astype(np.float32),
        rng.integers(0, 2, 40),
        num_classes=2,
        epochs=2,
    )
    ex.set_head(head)
    return ex


def photo_with_block(
    cells: tuple[int, int, int, int], colour=(230, 120, 60), size=(448, 448)
) -> Image.Image:
    """A dark grey photo with a garment over the given 7x7 cells (left, top, right, bottom)."""
    w, h = size
    img = np.full((h, w, 3), 20, np.uint8)
    left, top, right, bottom = cells
    img[top * h // 7 : bottom * h // 7, left * w // 7 : right * w // 7] = colour
    return Image.fromarray(img)


def test_crop_box_is_the_strong_region_around_the_peak_widened_by_a_cell():
    amap = np.zeros((7, 7))
    amap[2:4, 4:6] = 1.0
    amap[2, 4] = 1.2  # the peak
    amap[6, 0] = 0.9  # strong but not connected to the peak: background clutter
    assert feat.crop_box(amap) == pytest.approx((3 / 7, 1 / 7, 1.0, 5 / 7))
    assert feat.crop_box(amap, margin=0) == pytest.approx((4 / 7, 2 / 7, 6 / 7, 4 / 7))
    assert feat.crop_box(np.ones((7, 7))) == (0.0, 0.0, 1.0, 1.0)


def test_plain_query_features_equal_extract(extractor):
    photo = photo_with_block((1, 1, 3, 6))
    plain = extractor.extract_query([photo])
    reference = extractor.extract([photo])
    for key in ("pooled", "rgb10", "fused", "probs"):
        np.testing.assert_allclose(plain[key], reference[key], rtol=1e-5, atol=1e-6)
    assert plain["crop"].tolist() == [[0.0, 0.0, 1.0, 1.0]]


def test_flip_averages_the_photo_and_its_mirror(extractor):
    photo = photo_with_block((0, 1, 2, 6))  # on the left: its mirror pools differently
    flipped = extractor.extract_query([photo], flip=True)
    own = extractor.extract([photo])
    mirror = extractor.extract([photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)])
    assert not np.allclose(own["pooled"], mirror["pooled"])
    np.testing.assert_allclose(
        flipped["pooled"], (own["pooled"] + mirror["pooled"]) / 2, rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(flipped["rgb10"], own["rgb10"])  # colour: the photo's own
    expected = extractor.from_stored(flipped["pooled"], own["rgb10"])["fused"]
    np.testing.assert_allclose(flipped["fused"], expected, rtol=1e-5, atol=1e-6)


def test_crop_runs_the_cnn_again_on_the_garment_region(extractor):
    small = photo_with_block((4, 2, 6, 4))  # a small garment: cropped
    large = photo_with_block((0, 0, 7, 7), colour=(180, 180, 180))  # fills it: left alone
    out = extractor.extract_query([small, large], crop="map")
    left, top, right, bottom = out["crop"][0]
    assert (right - left) * (bottom - top) < feat.CROP_MAX_AREA
    pixels = (round(left * 448), round(top * 448), round(right * 448), round(bottom * 448))
    expected = extractor.extract([small.crop(pixels)])
    np.testing.assert_allclose(out["pooled"][0], expected["pooled"][0], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out["rgb10"][0], expected["rgb10"][0], atol=0.5)
    assert out["crop"][1].tolist() == [0.0, 0.0, 1.0, 1.0]
    np.testing.assert_allclose(
        out["pooled"][1], extractor.extract([large])["pooled"][0], rtol=1e-5, atol=1e-5
    )


def studio_photo(size=(450, 600), seed=0) -> Image.Image:
    """A catalogue-like shot: a garment in the middle of a white ground (slightly noisy and
    JPEG-compressed, as a real studio photo)."""
    w, h = size
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), 250, np.int16) + rng.integers(-4, 5, (h, w, 3))
    img[h // 5 : 4 * h // 5, w // 4 : 3 * w // 4] = (40, 60, 140)  # a navy shirt
    return jpeg(Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)))


def wooden_floor_photo(size=(450, 600), seed=0) -> Image.Image:
    """A shopper's snapshot: the same garment on planks of several browns with grain."""
    w, h = size
    rng = np.random.default_rng(seed)
    tones = np.array([(150, 100, 55), (190, 140, 85), (115, 75, 40), (170, 125, 70)])
    plank = (np.arange(w) // 40) % len(tones)  # vertical planks, 40 px wide
    img = tones[plank][None, :, :].repeat(h, axis=0).astype(np.int16)
    grain = (12 * np.sin(np.arange(h)[:, None] / 3.0 + plank[None, :])).astype(np.int16)
    img += grain[:, :, None] + rng.integers(-10, 11, (h, w, 3))
    img[h // 5 : 4 * h // 5, w // 4 : 3 * w // 4] = (40, 60, 140)
    return jpeg(Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)))


def jpeg(img: Image.Image) -> Image.Image:
    import io

    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def test_the_border_rule_tells_a_white_ground_from_a_wooden_floor():
    white = np.asarray(studio_photo())
    floor = np.asarray(wooden_floor_photo())
    assert framing.border_fraction(white) > 0.99
    assert framing.border_is_plain(white)
    assert framing.border_fraction(floor) < framing.BORDER_MIN_FRACTION
    assert not framing.border_is_plain(floor)
    # Only the 3-pixel frame counts: clutter just inside it changes nothing.
    framed = white.copy()
    framed[3:-3, 3:-3] = 0
    assert framing.border_is_plain(framed)
    # At least 80% of the frame within distance 26 of its median: one side of four in another
    # colour (25% of the frame) is not plain; a colour 20 away is.
    side = white.copy()
    side[:, :3] = (255, 0, 0)
    assert not framing.border_is_plain(side)
    side[:, :3] = np.asarray(side[0, 10], np.int16) - (20, 0, 0)
    assert framing.border_is_plain(side)
    with pytest.raises(ValueError):
        framing.border_fraction(np.zeros((8, 8), np.uint8))


def test_centre_crop_leaves_a_studio_photo_whole(extractor):
    photo = studio_photo()
    out = extractor.extract_query([photo], crop="centre")
    assert out["crop"].tolist() == [[0.0, 0.0, 1.0, 1.0]]
    whole = extractor.extract([photo])
    np.testing.assert_allclose(out["pooled"], whole["pooled"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["fused"], whole["fused"], rtol=1e-5, atol=1e-6)


def test_centre_crop_keeps_the_middle_of_a_photo_on_a_wooden_floor(extractor):
    photo = wooden_floor_photo()
    studio = studio_photo()
    out = extractor.extract_query([photo, studio], crop="centre")
    np.testing.assert_allclose(out["crop"][0], framing.CENTRE_BOX)
    assert out["crop"][1].tolist() == [0.0, 0.0, 1.0, 1.0]
    centre = extractor.extract([photo.crop((45, 60, 405, 540))])  # 10% off each side
    whole = extractor.extract([photo])
    assert not np.allclose(whole["pooled"][0], centre["pooled"][0], atol=1e-3)
    for key in ("pooled", "rgb10", "fused"):  # one pass, on the crop: colour from it too
        np.testing.assert_allclose(out[key][0], centre[key][0], rtol=1e-4, atol=1e-4)


def test_centre_crop_reads_a_large_photo_at_the_rules_resolution(extractor):
    """A phone's photo is judged reduced to <= 256 px: the rule's 3-pixel frame is then as
    wide a strip of the scene as on the photos it was measured on."""
    large = wooden_floor_photo(size=(1800, 2400), seed=1)
    out = extractor.extract_query([large, studio_photo(size=(1800, 2400))], crop="centre")
    np.testing.assert_allclose(out["crop"][0], framing.CENTRE_BOX)
    assert out["crop"][1].tolist() == [0.0, 0.0, 1.0, 1.0]


def test_off_never_crops_and_bad_modes_are_refused(extractor):
    photo = wooden_floor_photo()
    small = photo_with_block((4, 2, 6, 4))  # the map crop would crop it
    out = extractor.extract_query([photo, small], crop="off")
    assert out["crop"].tolist() == [[0.0, 0.0, 1.0, 1.0]] * 2
    np.testing.assert_allclose(
        out["pooled"], extractor.extract([photo, small])["pooled"], rtol=1e-5, atol=1e-6
    )
    for bad in ("middle", True, ""):
        with pytest.raises(ValueError, match="crop"):
            extractor.extract_query([photo], crop=bad)
