"""End-to-end feature extraction speed: JPEG bytes -> decode -> resize -> CNN -> numpy features.

Measured in one run, on the same images (read from the shared catalogue zip into memory first,
so zip I/O is not timed):

- ``naive``: torchvision resnet50 fp32, one image at a time, PIL decode + torchvision
  transforms in the loop, ``torch.no_grad`` (the baseline every speed-up is relative to), in
  a fresh child process with torch's and glibc's defaults (same images, same thread count).
- ``resnet50`` / ``efficientnet_lite0``: :class:`retrieval.features.FeatureExtractor`
  (``extract_paths``: BN folded, channels_last, frozen TorchScript graph, glibc heap reuse,
  micro-batches, inference_mode, colour feature included) with ``--workers`` decode
  processes.
- optional ``--int8``: resnet50 with FX post-training static int8 quantisation (x86/fbgemm),
  a data point only: it is *not* shipped (see docs/benchmarks.md).
- peak RSS of a fresh process holding one model and extracting a batch.
- head training time on ``--head-rows`` synthetic rows.

Random resnet50 weights are used when ImageNet weights are not on the machine: speed does
not depend on the weights' values.

Usage::

    .venv/bin/python bench/bench_features.py --limit 256
    .venv/bin/python bench/bench_features.py --limit 128 --repeats 3 --threads 2 --int8
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
import zipfile
from collections.abc import Callable, Sequence

import numpy as np
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from retrieval import features as feat  # noqa: E402
from retrieval.features import backbones  # noqa: E402

DEFAULT_ZIP = os.path.join(REPO, "..", "shared", "data", "fashion-product-images-small.zip")


def load_jpegs(zip_path: str, limit: int) -> list[bytes]:
    with zipfile.ZipFile(zip_path) as zf:
        names = sorted(n for n in zf.namelist() if n.endswith(".jpg"))
        step = max(1, len(names) // limit)
        return [zf.read(n) for n in names[::step][:limit]]


class Clock:
    """Wall and CPU time of this process (all its threads) over the timed loop only."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def stop(self, n: int) -> tuple[float, float]:
        """Returns (images per wall second, images per CPU second)."""
        wall, cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu
        return n / wall, n / max(cpu, 1e-9)


def naive_resnet50_in_child(zip_path: str, limit: int, threads: int) -> tuple[float, float]:
    """:func:`naive_resnet50` in a fresh process: it must not inherit what the optimised
    extractors set process-wide (glibc heap settings, ``RETRIEVAL_TUNE_MALLOC``)."""
    command = [sys.executable, __file__, "--zip", zip_path, "--limit", str(limit)]
    command += ["--threads", str(threads), "--naive-child"]
    out = subprocess.run(command, check=True, capture_output=True, text=True)
    rates = json.loads(out.stdout.strip().splitlines()[-1])
    return rates["wall"], rates["cpu"]


def naive_resnet50(images: Sequence[bytes]) -> tuple[float, float]:
    """The baseline: fp32, batch of 1, decode in the loop, torch and glibc defaults."""
    import torchvision
    from PIL import Image
    from torchvision import transforms

    net = torchvision.models.resnet50(weights=None).eval()
    trunk = torch.nn.Sequential(*list(net.children())[:-2])  # up to layer4: (1, 2048, 7, 7)
    tf = transforms.Compose(
        [
            transforms.Resize((224, 224)),
            transforms.ToTensor(),
            transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )
    with torch.no_grad():
        trunk(torch.zeros(1, 3, 224, 224))  # warm-up
        clock = Clock()
        for data in images:
            img = Image.open(io.BytesIO(data)).convert("RGB")
            fmap = trunk(tf(img).unsqueeze(0))
            _pooled = fmap.mean((2, 3)).numpy()
            _amap = fmap.mean(1).numpy()
        return clock.stop(len(images))


def optimised(
    ex: feat.FeatureExtractor, images: Sequence[bytes], workers: int
) -> tuple[float, float]:
    items = list(enumerate(images))
    next(ex.extract_paths(items[: ex.micro_batch], batch_size=ex.micro_batch))  # warm-up
    clock = Clock()
    n = 0
    for batch in ex.extract_paths(items, batch_size=32, num_workers=workers):
        n += len(batch.keys)
        assert not batch.errors, batch.errors
    return clock.stop(n)


def int8_resnet50(images: Sequence[bytes]) -> tuple[float, float]:
    """FX post-training static quantisation of the resnet50 trunk (data point only)."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    from retrieval.images import load_rgb224

    bb = feat.load_backbone("resnet50", pretrained=False, device="cpu", fold_bn=False)
    trunk = bb.trunk.eval().to(memory_format=torch.contiguous_format)
    calib = torch.from_numpy(np.stack([load_rgb224(b) for b in images[:16]])).permute(0, 3, 1, 2)
    norm = (calib.float() - bb.mean) * bb.inv_std
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare_fx(trunk, get_default_qconfig_mapping("x86"), (norm[:1],))
        with torch.no_grad():
            prepared(norm)
        qtrunk = convert_fx(prepared)
    micro = 8
    with torch.inference_mode():
        qtrunk(norm[:micro])
        clock = Clock()
        for i in range(0, len(images), 32):
            arr = np.stack([load_rgb224(b) for b in images[i : i + 32]])
            x = torch.from_numpy(arr).permute(0, 3, 1, 2)
            for j in range(0, x.shape[0], micro):
                fmap = qtrunk((x[j : j + micro].float() - bb.mean) * bb.inv_std)
                _ = fmap.mean((2, 3)).numpy(), fmap.mean(1).numpy()
        return clock.stop(len(images))


def rss_child(backbone: str, zip_path: str) -> None:
    """Run in a fresh process: load one model, extract 64 images, print peak RSS (MiB)."""
    images = load_jpegs(zip_path, 64)
    ex = feat.FeatureExtractor(backbone=backbone, pretrained=backbone != "resnet50")
    for _ in ex.extract_paths(list(enumerate(images)), batch_size=32):
        pass
    # VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over fork + exec, so a child
    # of a large parent would report the parent's peak.
    with open("/proc/self/status") as fh:
        peak = next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:")) / 1024
    print(json.dumps({"backbone": backbone, "peak_rss_mib": round(peak, 1)}))


def measure_rss(backbone: str, zip_path: str) -> float:
    out = subprocess.run(
        [sys.executable, __file__, "--zip", zip_path, "--rss-child", backbone],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_mib"]


def head_training(rows: int, epochs: int) -> dict[str, float]:
    rng = np.random.default_rng(0)
    classes = 59
    centres = rng.gamma(1.0, 0.5, (classes, 1280)).astype(np.float32)
    y = rng.integers(0, classes, rows)
    x = centres[y] + rng.gamma(1.0, 0.3, (rows, 1280)).astype(np.float32)
    yv = rng.integers(0, classes, 2000)
    xv = centres[yv] + rng.gamma(1.0, 0.3, (2000, 1280)).astype(np.float32)
    _, metrics = feat.train_head(
        x, y, num_classes=classes, epochs=epochs, val_pooled=xv, val_labels=yv
    )
    return {"rows": rows, "epochs": epochs, "seconds": metrics["seconds"]}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--zip", default=DEFAULT_ZIP)
    ap.add_argument("--limit", type=int, default=256, help="images (default 256)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--workers", type=int, default=0, help="DataLoader decode workers")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    ap.add_argument("--micro-batch", type=int, default=0, help="CNN micro-batch (0 = default)")
    ap.add_argument("--int8", action="store_true", help="also time int8 resnet50 (not shipped)")
    ap.add_argument("--head-rows", type=int, default=30000)
    ap.add_argument("--head-epochs", type=int, default=0, help="0 = train_head's default")
    ap.add_argument("--skip", nargs="*", default=[], help="naive resnet50 lite0 rss head")
    ap.add_argument("--json", help="write results here")
    ap.add_argument("--rss-child", help=argparse.SUPPRESS)
    ap.add_argument("--naive-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.naive_child:
        wall, cpu = naive_resnet50(load_jpegs(args.zip, args.limit))
        print(json.dumps({"wall": wall, "cpu": cpu}))
        return 0
    if args.rss_child:
        rss_child(args.rss_child, args.zip)
        return 0
    if not os.path.exists(args.zip):
        print(f"catalogue not found: {args.zip}", file=sys.stderr)
        return 2

    images = load_jpegs(args.zip, args.limit)
    info = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "images": len(images),
        "workers": args.workers,
        "loadavg_start": os.getloadavg(),
    }
    print(json.dumps(info), flush=True)
    results: dict[str, object] = {"info": info}

    # Round-major (naive, resnet50, lite0, int8, naive, ...) so that every configuration sees
    # the same background load; the speed-up is reported per round and as the median ratio.
    runners: dict[str, Callable[[], tuple[float, float]]] = {}
    if "naive" not in args.skip:
        runners["naive_resnet50_fp32_bs1"] = lambda: naive_resnet50_in_child(
            args.zip, args.limit, torch.get_num_threads()
        )
    for name in ("resnet50", "efficientnet_lite0"):
        key = "lite0" if name == "efficientnet_lite0" else name
        if key in args.skip:
            continue
        ex = feat.FeatureExtractor(
            backbone=name,
            pretrained=name != "resnet50" or backbones._resnet50_weight_file(None) is not None,
            micro_batch=args.micro_batch or None,
        )
        runners[f"{name}_optimised"] = lambda ex=ex: optimised(ex, images, args.workers)
    if args.int8:
        runners["resnet50_int8_fx_not_shipped"] = lambda: int8_resnet50(images)
    # images per CPU-second is the load-independent figure: with other processes on the
    # machine, wall-clock rates swing 2x between rounds while CPU-time rates stay put
    # (exact for 1 thread; with 2 threads it also counts OpenMP spin-waiting).
    rates: dict[str, list[float]] = {name: [] for name in runners}
    cpu_rates: dict[str, list[float]] = {name: [] for name in runners}
    for rnd in range(args.repeats):
        for name, fn in runners.items():
            wall, cpu = fn()
            rates[name].append(round(wall, 2))
            cpu_rates[name].append(round(cpu, 2))
            print(
                f"round {rnd + 1}: {name:32s} {wall:7.2f} img/s  {cpu:7.2f} img/CPU-s", flush=True
            )
    for name, runs in rates.items():
        results[name] = {
            "runs": runs,
            "best": max(runs),
            "median": statistics.median(runs),
            "per_cpu_second": cpu_rates[name],
            "per_cpu_second_median": statistics.median(cpu_rates[name]),
        }
        print(
            f"{name:32s} img/s runs={runs} best={max(runs):.1f}; img/CPU-s median "
            f"{statistics.median(cpu_rates[name]):.1f}",
            flush=True,
        )
    naive = rates.get("naive_resnet50_fp32_bs1")
    for name in ("resnet50_optimised", "resnet50_int8_fx_not_shipped"):
        if naive and name in rates:
            ratios = [round(o / b, 2) for o, b in zip(rates[name], naive, strict=True)]
            results[f"{name}_speedup_per_round"] = ratios
            results[f"{name}_speedup_median"] = statistics.median(ratios)
            print(f"{name} / naive per round: {ratios} (median {statistics.median(ratios)}x)")
            cpu_ratio = round(
                statistics.median(cpu_rates[name])
                / statistics.median(cpu_rates["naive_resnet50_fp32_bs1"]),
                2,
            )
            results[f"{name}_speedup_per_cpu_second"] = cpu_ratio
            print(f"{name} / naive, images per CPU-second: {cpu_ratio}x")
    if "rss" not in args.skip:
        for name in ("resnet50", "efficientnet_lite0"):
            mib = measure_rss(name, args.zip)
            results[f"peak_rss_mib_{name}"] = mib
            print(f"peak RSS, process holding {name}: {mib:.0f} MiB", flush=True)
    if "head" not in args.skip and args.head_rows:
        h = head_training(args.head_rows, args.head_epochs or feat.auto_epochs(args.head_rows))
        results["head_training"] = h
        print(f"head training: {h['rows']} rows x {h['epochs']} epochs in {h['seconds']:.1f} s")
    results["loadavg_end"] = os.getloadavg()
    print(f"load average at end: {results['loadavg_end']}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
