"""Fused colour + deep features for clothing retrieval (Hou, He & Liu 2020), numpy at the edges.

This is the only module of the project that imports torch/torchvision. Everything it returns
is a numpy array (or plain Python), so services, tasks and views never handle tensors.

The method, per image (shapes for one image; every function here is batched over N):

1. Decode, make upright/sRGB, resize to 224x224 RGB (:mod:`retrieval.images`).
2. Backbone without classifier -> pooled feature ``(D,)`` (D=2048 resnet50, 1280 lite0) and
   the last conv map ``(C, 7, 7)``; only its channel mean ``(7, 7)`` leaves the network.
3. Head FC1 (D->512) + FC2 (512->categories), trained with cross-entropy on cached pooled
   features (backbone frozen). Deep feature = FC1 output ``(512,)``.
4. Colour: positions of the 10 largest values of the channel-mean map (row-major 0..48,
   strongest first); the 224x224 image average-pooled to 7x7 (32x32 blocks, RGB 0..255);
   the RGB at those positions -> ``(10, 3)`` -> a 30-d vector (variant: see
   :data:`COLOUR_VARIANTS`).
5. Fused = concat(deep 512, weight * colour 30) -> ``(542,)``.

What is stored per image (``pooled``, ``rgb10``) is enough to recompute ``deep``, every colour
variant and ``fused`` without running the CNN again (:func:`deep_from_pooled`,
:func:`colour_feature`, :meth:`FeatureExtractor.from_stored`), e.g. after retraining the head.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np
import torch
from PIL import Image

from retrieval.features.backbones import (
    _CPU_MICRO_BATCH,
    _CPU_MICRO_BATCH_BY_BACKBONE,
    _CUDA_MICRO_BATCH,
    Backbone,
    _pick_device,
    _resnet50_weight_file,
    load_backbone,
    resolve_backbone,
)
from retrieval.features.colour import (
    CROP_MAX_AREA,
    colour_feature,
    colour_positions,
    crop_box,
    fuse,
    pooled_rgb_at,
)
from retrieval.features.cpu import freeze_backbone, keep_freed_memory_for_reuse
from retrieval.features.framing import CENTRE_BOX, RULE_MAX_SIDE, border_is_plain, box_pixels
from retrieval.features.head import ClothingHead, classify, deep_from_pooled, load_head
from retrieval.images import (
    DEFAULT_MAX_PIXELS,
    GRID,
    INPUT_SIZE,
    ImageError,
    ImageSource,
    load_rgb224,
    open_image,
    pooled_grid,
    resize_rgb,
)
from retrieval.spec import (
    COLOUR_DIM,
    COLOUR_VARIANTS,
    DEFAULT_COLOUR_VARIANT,
    DEFAULT_COLOUR_WEIGHT,
    DEFAULT_NORMALIZE_DEEP,
    NUM_POSITIONS,
    PRECISIONS,
    QUERY_CROP_MODES,
    is_tuned,
)

logger = logging.getLogger(__name__)


K = TypeVar("K")


@dataclass
class ExtractedBatch(Generic[K]):
    """One batch of a bulk extraction.

    Attributes:
        keys: keys of the images that succeeded, in the order of the feature rows.
        features: as :meth:`FeatureExtractor.extract` (arrays with ``len(keys)`` rows).
        errors: ``(key, reason)`` for each image that could not be used; the rest of the
            batch is unaffected.
    """

    keys: list[K]
    features: dict[str, np.ndarray]
    errors: list[tuple[K, str]] = field(default_factory=list)


class _DecodeDataset(torch.utils.data.Dataset):
    """Decode + resize in DataLoader workers; a bad image is a result, not an exception."""

    def __init__(self, items: Sequence[tuple[Any, Any]], max_pixels: int) -> None:
        self.items = items
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[Any, np.ndarray | None, str | None]:
        key, source = self.items[i]
        return _decode_item(key, source, self.max_pixels)


def _decode_item(
    key: Any, source: Any, max_pixels: int
) -> tuple[Any, np.ndarray | None, str | None]:
    try:
        if isinstance(source, Image.Image):
            return key, resize_rgb(source.convert("RGB")), None
        return key, load_rgb224(source, max_pixels=max_pixels), None
    except ImageError as exc:
        return key, None, str(exc)
    except Exception as exc:  # a loader callable failing (I/O, missing member, ...)
        return key, None, f"could not read the image ({type(exc).__name__}: {exc})"


def _collate(
    rows: list[tuple[Any, np.ndarray | None, str | None]],
) -> tuple[list[Any], torch.Tensor, list[tuple[Any, str]]]:
    keys = [k for k, arr, _ in rows if arr is not None]
    arrays = [arr for _, arr, _ in rows if arr is not None]
    errors = [(k, err) for k, arr, err in rows if arr is None and err is not None]
    batch = (
        torch.from_numpy(np.stack(arrays))
        if arrays
        else torch.empty((0, INPUT_SIZE, INPUT_SIZE, 3), dtype=torch.uint8)
    )
    return keys, batch, errors


def decoded_batches(
    items: Iterable[tuple[K, ImageSource | Image.Image]],
    *,
    batch_size: int,
    num_workers: int,
    max_pixels: int,
    prefetch_factor: int = 4,
    pin_memory: bool = False,
) -> Iterator[tuple[list[Any], torch.Tensor, list[tuple[Any, str]]]]:
    """Decode and resize ``(key, source)`` items in batches: ``(keys, (n, 224, 224, 3) uint8
    tensor, [(key, reason)] of the unreadable ones)``, in input order (see
    :meth:`FeatureExtractor.extract_paths` for ``num_workers``)."""
    if num_workers <= 0:
        chunk: list[tuple[Any, np.ndarray | None, str | None]] = []
        for key, source in items:
            chunk.append(_decode_item(key, source, max_pixels))
            if len(chunk) >= batch_size:
                yield _collate(chunk)
                chunk = []
        if chunk:
            yield _collate(chunk)
        return
    loader = torch.utils.data.DataLoader(
        _DecodeDataset(list(items), max_pixels),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_collate,
        pin_memory=pin_memory,
        prefetch_factor=prefetch_factor,
        persistent_workers=False,
        # Not fork: a forked child inherits the parent's open sockets and runs its
        # after-fork hooks (kombu closes the parent's Redis channels from the child and
        # hangs there). forkserver children start from a clean process.
        multiprocessing_context="forkserver",
    )
    yield from loader


def _rule_view(photo: Image.Image) -> np.ndarray:
    """The decoded photo as the plain-border rule reads it: ``(H, W, 3)`` uint8, reduced (box
    average by an integer factor) to at most :data:`RULE_MAX_SIDE` px on its longer side, the
    resolution the rule was measured at. Smaller photos are read as they are."""
    factor = -(-max(photo.size) // RULE_MAX_SIDE)  # ceil
    if factor > 1:
        photo = photo.reduce(factor)
    return np.asarray(photo.convert("RGB"), dtype=np.uint8)


class FeatureExtractor:
    """Backbone + optional head + colour settings; numpy in, numpy out.

    Load once per process (:func:`get_extractor` caches instances); ``extract`` is safe to
    call from several threads (inference only, no shared mutable state besides torch's).
    """

    def __init__(
        self,
        *,
        backbone: str = "auto",
        weights_path: str | os.PathLike[str] | None = None,
        head: ClothingHead | str | os.PathLike[str] | None = None,
        device: str | torch.device | None = None,
        precision: str = "auto",
        colour_variant: str = DEFAULT_COLOUR_VARIANT,
        colour_weight: float = DEFAULT_COLOUR_WEIGHT,
        normalize_deep: bool = DEFAULT_NORMALIZE_DEEP,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        micro_batch: int | None = None,
        pretrained: bool = True,
        module: Backbone | None = None,
        num_threads: int | None = None,
        freeze: bool = True,
        tune_malloc: bool = True,
        tuned_path: str | os.PathLike[str] | None = None,
    ) -> None:
        """
        Args:
            backbone: ``"auto"``, ``"resnet50"``, ``"efficientnet_lite0"`` or a fine-tuned
                backbone key (``efficientnet_lite0+ft<id>``, with ``tuned_path``).
            weights_path: resnet50 weights file (see :func:`load_backbone`).
            tuned_path: a fine-tuned backbone's weights file (see :func:`load_backbone`).
            head: a trained head, or the path of one saved by :func:`save_head`; without a
                head, ``deep``/``fused`` are not produced.
            device: None = CUDA when available, else CPU.
            precision: ``"fp32"``, ``"bf16"`` (autocast; CPU or CUDA), ``"fp16"`` (CUDA) or
                ``"auto"`` = fp16 on CUDA, fp32 on CPU. bf16 on a CPU without native bf16
                (AVX2-only, like this project's 2-core machines) is ~6x *slower*: emulated.
            colour_variant, colour_weight, normalize_deep: how ``colour``/``fused`` are built.
            max_pixels: refusal threshold for decoded images.
            micro_batch: images per CNN forward (default on CPU: 2 for efficientnet_lite0,
                8 for resnet50; 128 on CUDA).
            pretrained: False = random backbone weights (tests).
            module: use this backbone module instead of loading one (tests, custom nets).
            num_threads: if set, ``torch.set_num_threads(num_threads)`` (process-wide). On a
                2-core machine shared with other busy processes (web + worker + database),
                use 1: OpenMP threads spin-wait for a busy core and lite0 collapsed from
                ~30 img/s (1 thread) to 2-13 img/s (2 threads) when one core was taken.
            freeze: on CPU in fp32, run the backbone as a frozen TorchScript graph
                (:func:`freeze_backbone`: same outputs, lite0 ~1.3x faster). Ignored on CUDA
                and under bf16 autocast, which run the eager module.
            tune_malloc: on CPU, :func:`keep_freed_memory_for_reuse` (process-wide, once).
        """
        if num_threads is not None:
            torch.set_num_threads(max(1, int(num_threads)))
        if colour_variant not in COLOUR_VARIANTS:
            raise ValueError(f"unknown colour variant {colour_variant!r}: {COLOUR_VARIANTS}")
        if module is None:
            module = load_backbone(
                backbone,
                weights_path=weights_path,
                device=device,
                pretrained=pretrained,
                tuned_path=tuned_path,
            )
        elif device is not None:
            module = module.to(_pick_device(device))
        self.model: Backbone = module.eval()
        self.device: torch.device = module.mean.device
        self.backbone_name: str = module.name
        self.pooled_dim: int = module.dim
        self.precision = self._resolve_precision(precision)
        self.colour_variant = colour_variant
        self.colour_weight = float(colour_weight)
        self.normalize_deep = bool(normalize_deep)
        self.max_pixels = int(max_pixels)
        self.micro_batch = micro_batch or (
            _CUDA_MICRO_BATCH
            if self.device.type == "cuda"
            else _CPU_MICRO_BATCH_BY_BACKBONE.get(self.backbone_name, _CPU_MICRO_BATCH)
        )
        if tune_malloc and self.device.type == "cpu":
            keep_freed_memory_for_reuse()
        # What runs the CNN: the frozen graph where it applies, else the module itself.
        self._cnn: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] = self.model
        if freeze and self.device.type == "cpu" and self.precision == "fp32":
            self._cnn = freeze_backbone(self.model)
        self.frozen: bool = self._cnn is not self.model
        self.head: ClothingHead | None = None
        self.set_head(head)

    def _resolve_precision(self, precision: str) -> str:
        cuda = self.device.type == "cuda"
        if precision == "auto":
            return "fp16" if cuda else "fp32"
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be auto, fp32, bf16 or fp16, not {precision!r}")
        if precision == "fp16" and not cuda:
            raise ValueError("fp16 autocast is for CUDA; use bf16 or fp32 on CPU")
        return precision

    def set_head(self, head: ClothingHead | str | os.PathLike[str] | None) -> None:
        """Attach (or detach, with None) a head; a path is loaded with :func:`load_head`."""
        if head is not None and not isinstance(head, ClothingHead):
            head = load_head(head)
        if head is not None:
            if head.in_dim != self.pooled_dim:
                raise ValueError(
                    f"head expects {head.in_dim}-d pooled features but backbone "
                    f"{self.backbone_name} gives {self.pooled_dim}-d"
                )
            if head.backbone not in (None, self.backbone_name):
                raise ValueError(
                    f"head was trained on {head.backbone} features, not {self.backbone_name}"
                )
            head = head.to(self.device).eval()
        self.head = head

    def describe(self) -> dict[str, Any]:
        """Settings that determine the vectors (store next to an index to detect drift)."""
        return {
            "backbone": self.backbone_name,
            "weights": self.model.weights_source,
            "pooled_dim": self.pooled_dim,
            "precision": self.precision,
            "device": str(self.device),
            "frozen_graph": self.frozen,
            "colour_variant": self.colour_variant,
            "colour_weight": self.colour_weight,
            "normalize_deep": self.normalize_deep,
            "has_head": self.head is not None,
            "head_classes": self.head.num_classes if self.head is not None else None,
        }

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    @torch.inference_mode()
    def _run_cnn(self, batch: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """``(N, 224, 224, 3)`` uint8 tensor -> pooled ``(N, D)``, maps ``(N, 7, 7)`` (numpy)."""
        pooled_out, maps_out = [], []
        non_blocking = self.device.type == "cuda" and batch.is_pinned()
        for i in range(0, batch.shape[0], self.micro_batch):
            # NHWC uint8 -> NCHW view in channels_last memory (no copy); transfer as uint8
            # (4x fewer bytes than float) and scale on the device.
            x = batch[i : i + self.micro_batch].permute(0, 3, 1, 2)
            x = x.to(self.device, non_blocking=non_blocking)
            with self._autocast():
                pooled, amap = self._cnn(x)
            pooled_out.append(pooled.float().cpu().numpy())
            maps_out.append(amap.float().cpu().numpy())
        return np.concatenate(pooled_out), np.concatenate(maps_out)

    def from_arrays(self, rgb224: np.ndarray | torch.Tensor) -> dict[str, np.ndarray]:
        """Features of already decoded, resized images.

        Args:
            rgb224: ``(N, 224, 224, 3)`` uint8 RGB.

        Returns:
            See :meth:`extract`.
        """
        batch = rgb224 if isinstance(rgb224, torch.Tensor) else torch.from_numpy(rgb224)
        if batch.ndim != 4 or tuple(batch.shape[1:]) != (INPUT_SIZE, INPUT_SIZE, 3):
            raise ValueError(f"expected (N, {INPUT_SIZE}, {INPUT_SIZE}, 3), got {batch.shape}")
        if batch.dtype != torch.uint8:
            raise ValueError(f"expected uint8 pixels, got {batch.dtype}")
        if batch.shape[0] == 0:
            return self._empty()
        pooled, maps = self._run_cnn(batch)
        return self._from_cnn(batch.numpy(), pooled, maps)

    def _from_cnn(
        self, rgb224: np.ndarray, pooled: np.ndarray, maps: np.ndarray
    ) -> dict[str, np.ndarray]:
        """Everything :meth:`extract` returns, from the images ``(N, 224, 224, 3)`` uint8 and
        the CNN's outputs for them (pooled ``(N, D)``, maps ``(N, 7, 7)``)."""
        positions = colour_positions(maps)
        rgb10 = pooled_rgb_at(pooled_grid(rgb224), positions)
        out = {"pooled": pooled, "activation_map": maps, "positions": positions, "rgb10": rgb10}
        out.update(self.from_stored(pooled, rgb10))
        return out

    def extract_query(
        self,
        images: Sequence[ImageSource | Image.Image],
        *,
        flip: bool = False,
        crop: str = "off",
    ) -> dict[str, np.ndarray]:
        """Features of query photos (a shopper's), with optional test-time steps.

        Each step is a departure from the paper, which runs the CNN once on the whole photo,
        for photos that do not look like the catalogue's studio shots (measured in
        docs/benchmarks.md, "Evaluation" and "Shoppers' photos", Lever 4):

        - ``crop="centre"`` (the product's default, ``RETRIEVAL_QUERY_CROP``): a photo whose
          border is not plain (:func:`retrieval.features.framing.border_is_plain`, read on the
          decoded photo reduced to at most :data:`~retrieval.features.framing.RULE_MAX_SIDE`
          px, 3-pixel frame) is cropped to the middle 80% of each side
          (:data:`~retrieval.features.framing.CENTRE_BOX`) before its one CNN pass; the
          colour then comes from the crop too. Shoppers' p@5 0.809 -> 0.835 with studio
          photos unchanged (cropping every photo cost them 1.6 points).
        - ``crop="map"`` (background suppression): a first CNN pass finds the garment on the
          activation map (:func:`crop_box`); when that region covers less than
          :data:`CROP_MAX_AREA` of the photo, the photo is cropped to it (from the decoded
          image, not the 224 px copy) and run again. Other photos keep their first pass.
        - ``crop="off"``: the whole photo, as the paper.
        - ``flip``: the pooled feature is the mean of the photo's and its mirror image's
          (one more CNN pass); colour and positions stay those of the photo itself.

        Args:
            images: PIL images, paths, encoded bytes, file objects or loader callables.
            crop: one of :data:`retrieval.spec.QUERY_CROP_MODES`.

        Returns:
            As :meth:`extract`, plus ``crop`` ``(N, 4)`` float32: the box used as fractions
            (left, top, right, bottom); ``(0, 0, 1, 1)`` where the photo was not cropped,
            ``(0.1, 0.1, 0.9, 0.9)`` where ``"centre"`` cropped it.
        """
        if crop not in QUERY_CROP_MODES:
            raise ValueError(f"crop must be one of {QUERY_CROP_MODES}, not {crop!r}")
        if not len(images):
            out = self._empty()
            out["crop"] = np.zeros((0, 4), np.float32)
            return out
        size = (INPUT_SIZE, INPUT_SIZE) if crop == "off" else (2 * INPUT_SIZE, 2 * INPUT_SIZE)
        photos = [
            src.convert("RGB")
            if isinstance(src, Image.Image)
            else open_image(src, max_pixels=self.max_pixels, draft_size=size)
            for src in images
        ]
        boxes = np.tile(np.array([0.0, 0.0, 1.0, 1.0], np.float32), (len(photos), 1))
        if crop == "centre":
            for i, photo in enumerate(photos):
                if not border_is_plain(_rule_view(photo)):
                    photos[i] = photo.crop(box_pixels(photo.size, CENTRE_BOX))
                    boxes[i] = CENTRE_BOX
        arrays = np.stack([resize_rgb(photo) for photo in photos])
        pooled, maps = self._run_cnn(torch.from_numpy(arrays))
        if crop == "map":
            redo = []
            for i, photo in enumerate(photos):
                left, top, right, bottom = crop_box(maps[i])
                if (right - left) * (bottom - top) >= CROP_MAX_AREA:
                    continue
                box = (left, top, right, bottom)
                arrays[i] = resize_rgb(photo.crop(box_pixels(photo.size, box)))
                boxes[i] = box
                redo.append(i)
            if redo:
                pooled_redo, maps_redo = self._run_cnn(torch.from_numpy(arrays[redo]))
                pooled[redo], maps[redo] = pooled_redo, maps_redo
        out = self._from_cnn(arrays, pooled, maps)
        if flip:
            mirrored = np.ascontiguousarray(arrays[:, :, ::-1])
            pooled_mirror, _ = self._run_cnn(torch.from_numpy(mirrored))
            pooled = (pooled + pooled_mirror) / 2.0
            out.update(self.from_stored(pooled, out["rgb10"]))
            out["pooled"] = pooled
        out["crop"] = boxes
        return out

    def from_stored(self, pooled: np.ndarray, rgb10: np.ndarray) -> dict[str, np.ndarray]:
        """Recompute colour/deep/fused from stored ``pooled`` ``(N, D)`` and ``rgb10``
        ``(N, 10, 3)`` without the CNN (after retraining the head or changing the variant)."""
        out = {
            "colour_paper": colour_feature(rgb10, variant="paper"),
            "colour": colour_feature(rgb10, variant=self.colour_variant),
        }
        if self.head is not None:
            deep = deep_from_pooled(self.head, pooled)
            out["deep"] = deep
            out["fused"] = fuse(
                deep, out["colour"], weight=self.colour_weight, normalize_deep=self.normalize_deep
            )
            out["probs"] = classify(self.head, pooled)
        return out

    def _empty(self) -> dict[str, np.ndarray]:
        out = {
            "pooled": np.zeros((0, self.pooled_dim), np.float32),
            "activation_map": np.zeros((0, GRID, GRID), np.float32),
            "positions": np.zeros((0, NUM_POSITIONS), np.int64),
            "rgb10": np.zeros((0, NUM_POSITIONS, 3), np.float32),
            "colour_paper": np.zeros((0, COLOUR_DIM), np.float32),
            "colour": np.zeros((0, COLOUR_DIM), np.float32),
        }
        if self.head is not None:
            out["deep"] = np.zeros((0, self.head.hidden), np.float32)
            out["fused"] = np.zeros((0, self.head.hidden + COLOUR_DIM), np.float32)
            out["probs"] = np.zeros((0, self.head.num_classes), np.float32)
        return out

    def extract(
        self, images: Sequence[ImageSource | Image.Image], *, batch_size: int = 32
    ) -> dict[str, np.ndarray]:
        """Features of a few images (query photos, small batches), decoded in this thread.

        Args:
            images: PIL images, paths, encoded bytes, file objects or loader callables.
            batch_size: images decoded and held in memory at a time.

        Returns:
            dict of numpy arrays, one row per image, in input order:

            - ``pooled`` ``(N, D)`` float32: backbone pooled feature (store it).
            - ``activation_map`` ``(N, 7, 7)`` float32: channel-mean of the last conv map.
            - ``positions`` ``(N, 10)`` int64: top-10 positions, strongest first.
            - ``rgb10`` ``(N, 10, 3)`` float32: raw RGB 0..255 there (store it).
            - ``colour_paper`` ``(N, 30)`` float32: the paper's z-scored colour feature.
            - ``colour`` ``(N, 30)`` float32: the configured variant.
            - with a head: ``deep`` ``(N, 512)``, ``fused`` ``(N, 542)``, ``probs``
              ``(N, num_classes)`` float32.

        Raises:
            ImageError: an image cannot be decoded (use :meth:`extract_paths` to skip bad
                images instead).
        """
        parts: list[dict[str, np.ndarray]] = []
        for i in range(0, len(images), batch_size):
            arrays = []
            for src in images[i : i + batch_size]:
                if isinstance(src, Image.Image):
                    arrays.append(resize_rgb(src.convert("RGB")))
                else:
                    arrays.append(load_rgb224(src, max_pixels=self.max_pixels))
            parts.append(self.from_arrays(np.stack(arrays)))
        if not parts:
            return self._empty()
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def extract_paths(
        self,
        items: Iterable[tuple[K, ImageSource | Image.Image]],
        *,
        batch_size: int = 32,
        num_workers: int = 0,
        prefetch_factor: int = 4,
    ) -> Iterator[ExtractedBatch[K]]:
        """Bulk extraction: yields one :class:`ExtractedBatch` per ``batch_size`` inputs.

        Args:
            items: ``(key, source)`` pairs; ``source`` as :func:`retrieval.images.open_image`
                accepts (use :class:`retrieval.images.ZipMember` for zip archives).
            batch_size: inputs per yielded batch.
            num_workers: DataLoader worker processes that decode and resize (0 = decode in
                this process, streaming ``items`` lazily). With workers, ``items`` is
                materialised as a list and sources must be picklable under the platform's
                start method (paths, bytes and ``ZipMember`` are).
            prefetch_factor: batches each worker decodes ahead.

        Yields:
            Batches in input order. A bad image never fails its batch: it is listed in
            ``errors`` with its key and the reason.
        """
        for keys, batch, errors in decoded_batches(
            items,
            batch_size=batch_size,
            num_workers=num_workers,
            prefetch_factor=prefetch_factor,
            max_pixels=self.max_pixels,
            pin_memory=self.device.type == "cuda",
        ):
            yield self._finish(keys, batch, errors)

    def _finish(
        self, keys: list[Any], batch: torch.Tensor, errors: list[tuple[Any, str]]
    ) -> ExtractedBatch[Any]:
        return ExtractedBatch(keys=keys, features=self.from_arrays(batch), errors=errors)


_CACHE: dict[tuple[Any, ...], FeatureExtractor] = {}


_CACHE_LOCK = threading.Lock()


_CACHE_MAX = 2


def _file_stamp(path: str | os.PathLike[str] | None) -> tuple[str, int, int] | None:
    if path is None:
        return None
    p = os.path.abspath(os.fspath(path))
    try:
        st = os.stat(p)
    except FileNotFoundError:
        return (p, -1, -1)
    return (p, st.st_mtime_ns, st.st_size)


def get_extractor(
    *,
    backbone: str = "auto",
    weights_path: str | os.PathLike[str] | None = None,
    head_path: str | os.PathLike[str] | None = None,
    device: str | None = None,
    precision: str = "auto",
    colour_variant: str = DEFAULT_COLOUR_VARIANT,
    colour_weight: float = DEFAULT_COLOUR_WEIGHT,
    normalize_deep: bool = DEFAULT_NORMALIZE_DEEP,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    num_threads: int | None = None,
    freeze: bool = True,
    tune_malloc: bool = True,
    tuned_path: str | os.PathLike[str] | None = None,
) -> FeatureExtractor:
    """The process-wide :class:`FeatureExtractor` for these settings (loaded on first use).

    The cache key includes the head file's mtime and size, so a retrained head (written
    atomically by :func:`save_head`) is picked up on the next call; the backbone module is
    reused when only the head or colour settings changed. At most two extractors are kept.
    A fine-tuned backbone key (``efficientnet_lite0+ft<id>``) is its own backbone, keyed by
    its weights file (``tuned_path``) the same way.
    """
    name = resolve_backbone(backbone, weights_path=weights_path)
    dev = str(_pick_device(device))
    weights_key = _file_stamp(_resnet50_weight_file(weights_path)) if name == "resnet50" else None
    if tuned_path is not None and is_tuned(name):
        weights_key = _file_stamp(tuned_path)
    key = (
        name,
        weights_key,
        _file_stamp(head_path),
        dev,
        precision,
        colour_variant,
        float(colour_weight),
        bool(normalize_deep),
        int(max_pixels),
        bool(freeze),
    )
    with _CACHE_LOCK:
        found = _CACHE.get(key)
        if found is not None:
            return found
        module = next(
            (
                ex.model
                for k, ex in _CACHE.items()
                if k[0] == name and k[1] == weights_key and k[3] == dev
            ),
            None,
        )
        extractor = FeatureExtractor(
            backbone=name,
            weights_path=weights_path,
            head=head_path if head_path is not None and os.path.exists(head_path) else None,
            device=dev,
            precision=precision,
            colour_variant=colour_variant,
            colour_weight=colour_weight,
            normalize_deep=normalize_deep,
            max_pixels=max_pixels,
            module=module,
            num_threads=num_threads,
            freeze=freeze,
            tune_malloc=tune_malloc,
            tuned_path=tuned_path if is_tuned(name) else None,
        )
        while len(_CACHE) >= _CACHE_MAX:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = extractor
        return extractor
