"""retrieval.features.finetune: the fine-tuned top of efficientnet_lite0 as a weights file of
its own (issue #14). Plain pytest functions: no Django, no database; random images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from retrieval import features as feat

KEY = "efficientnet_lite0+fttest0001"


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """A top trained for one epoch on the block-14 activations of 12 random images, saved."""
    rgb = torch.from_numpy(
        np.random.default_rng(0).integers(0, 256, (12, 224, 224, 3), dtype=np.uint8)
    )
    out = feat.TapExtractor().from_arrays(rgb)
    labels = np.arange(12) % 3
    states: list[tuple[int, int, dict]] = []
    top, metrics = feat.train_top(
        out["taps"],
        rows=np.arange(12),
        labels=labels,
        num_classes=3,
        epochs=2,
        lr_blocks=1e-2,  # large: the tuned top must differ visibly from ImageNet's
        val_rows=np.arange(6),
        val_labels=labels[:6],
        backbone=KEY,
        progress=lambda epoch, epochs, m: states.append((epoch, epochs, m)),
    )
    path = tmp_path_factory.mktemp("tuned") / "tuned.pt"
    sha = feat.save_tuned(path, top, key=KEY, metrics=metrics)
    return rgb, out, top, metrics, states, path, sha


def test_train_top_reports_each_epoch_and_keeps_the_best(tuned):
    _, out, top, metrics, states, _, _ = tuned
    assert [(e, n) for e, n, _ in states] == [(1, 2), (2, 2)]
    assert all({"epoch", "loss", "seconds", "val_accuracy"} <= set(m) for _, _, m in states)
    best = max(m["val_accuracy"] for _, _, m in states)
    assert metrics["val_accuracy"] == best and metrics["epochs"] == 2
    assert top.head.backbone == KEY


def test_the_tuned_network_from_the_file_gives_the_tops_outputs(tuned):
    """Built from the file (as searches build it), the full network gives what the top gives
    on the cached float16 activations, and not what the ImageNet backbone gives."""
    rgb, out, top, _, _, path, sha = tuned
    assert feat.load_tuned_state(key=KEY, path=path)["sha256"] == sha
    extractor = feat.FeatureExtractor(backbone=KEY, tuned_path=path)
    assert extractor.backbone_name == KEY and extractor.frozen
    full = extractor.from_arrays(rgb)
    pooled, maps = top.pooled_and_maps(out["taps"])
    scale = np.abs(pooled).max()
    assert np.abs(full["pooled"] - pooled).max() < 2e-3 * scale
    assert np.abs(full["activation_map"] - maps).max() < 2e-3 * np.abs(maps).max()
    base = feat.FeatureExtractor(backbone="efficientnet_lite0").from_arrays(rgb)
    assert np.abs(base["pooled"] - full["pooled"]).max() > 1e-2 * scale
    again = feat.FeatureExtractor(backbone=KEY, tuned_path=path).from_arrays(rgb)
    assert np.array_equal(again["pooled"], full["pooled"])


def test_a_bad_weights_file_is_a_clear_error(tuned, tmp_path):
    _, _, _, _, _, path, _ = tuned
    with pytest.raises(feat.TunedWeightsError, match="missing"):
        feat.load_backbone(KEY, tuned_path=tmp_path / "gone.pt")
    with pytest.raises(feat.TunedWeightsError, match="holds backbone"):
        feat.load_tuned_state(key="efficientnet_lite0+ftother00", path=path)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(feat.TunedWeightsError, match="unreadable"):
        feat.load_backbone(KEY, tuned_path=truncated)
    payload = torch.load(path, weights_only=True)
    payload["state_dict"]["_bn1.bias"][0] += 0.5
    corrupt = tmp_path / "corrupt.pt"
    torch.save(payload, corrupt)
    with pytest.raises(feat.TunedWeightsError, match="corrupt"):
        feat.load_backbone(KEY, tuned_path=corrupt)


def test_only_lite0_keys_are_fine_tuned_backbones():
    assert feat.resolve_backbone(KEY) == KEY
    with pytest.raises(ValueError, match="unknown backbone"):
        feat.resolve_backbone("resnet50+ft00000000")
    with pytest.raises(ValueError, match="cannot be fine-tuned"):
        feat.new_tuned_key(base="resnet50")
    key = feat.new_tuned_key(base="efficientnet_lite0")
    assert key.startswith("efficientnet_lite0+ft") and len(key) <= 40
