"""Lever 3 of issue #14, cost side: seconds per training step of the top of efficientnet_lite0
on cached cut activations (``bench/partial_finetune.train_top``'s step), per cut point.

Machine: 2 vCPU AMD EPYC (shared with other jobs), no GPU, 1 torch thread, nice 15. Command::

    nice -n 15 .venv/bin/python bench/shopper_ft_timing.py --steps 15

Prints wall and CPU s/step at batch 64 (CPU time ~ the wall time on a quiet core) and the
extrapolated minutes per epoch of 12,776 rows (studio + one
augmented copy of the 6,388 training garments) and of 8,000. The gain side is
``bench/shopper_finetune.py``.
"""

import argparse
import os
import sys
import time

import numpy as np
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import shopper_lab  # noqa: F401  (thread setting, paths)
from partial_finetune import TapNet, TopNet, build_lite

ap = argparse.ArgumentParser()
ap.add_argument("--steps", type=int, default=15)
args = ap.parse_args()
net = build_lite("efficientnet_lite0")
tn = TapNet(net)
for cut, start, ch in (("b", tn.last, 192), ("a", tn.first + 1, 192)):
    top = TopNet(net, start, 55).train()
    opt = torch.optim.AdamW(top.parameters(), lr=1e-4)
    x = torch.randn(64, ch, 7, 7)
    y = torch.randint(0, 55, (64,))
    times, cpu = [], []
    for i in range(args.steps + 2):
        t, c = time.perf_counter(), time.process_time()
        loss = nn.functional.cross_entropy(top(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i >= 2:
            times.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
    s, c = float(np.median(times)), float(np.median(cpu))
    params = sum(p.numel() for p in top.parameters())
    print(
        f"cut {cut} (blocks {start}-15 + head conv + FC1/FC2, {params / 1e6:.2f}M params): "
        f"{s:.3f} s/step of 64 -> {s * 12776 / 64 / 60:.1f} min/epoch of 12,776 rows, "
        f"{s * 8000 / 64 / 60:.1f} min/epoch of 8,000; CPU time {c:.3f} s/step -> "
        f"{c * 12776 / 64 / 60:.1f} CPU-min/epoch of 12,776 (wall on a quiet core)",
        flush=True,
    )
