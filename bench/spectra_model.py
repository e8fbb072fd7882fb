"""Training and inference speed of the spectra models on this machine (samples/s, median of timed steps).

    python bench/spectra_model.py [--threads 2] [--steps 8]

Compares, at the contest's input length (2,600) and batch 160: the faithful DilatedResNet1D (conv1d, fp32), the same
under bf16 autocast, and the options "ours" may use (BatchNorm, median-normalised input is a data option and costs
nothing here). Each configuration: 2 warm-up steps, then `--steps` timed optimiser steps; inference on 1,000 spectra.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from trainer.models.dilated_resnet1d import DilatedResNet1D

CONFIGS = {
    "faithful fp32": ({}, False),
    "faithful bf16 autocast": ({}, True),
    "norm=batch fp32": ({"norm": "batch"}, False),
    "norm=batch widths x1.5": ({"norm": "batch", "widths": [24, 24, 48, 48, 96, 96, 192, 192]}, False),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--length", type=int, default=2600)
    ap.add_argument("--batch", type=int, default=160)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(args.batch, 1, args.length)
    y = torch.randint(0, 4, (args.batch,))
    xe = torch.randn(1000, 1, args.length)
    print(f"threads={args.threads} length={args.length} batch={args.batch}")
    for name, (kw, bf16) in CONFIGS.items():
        model = DilatedResNet1D(4, **kw)
        opt = torch.optim.Adam(model.parameters(), 1e-3)
        times = []
        for i in range(args.steps + 2):
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = torch.nn.functional.cross_entropy(model(x).float(), y)
            loss.backward()
            opt.step()
            if i >= 2:
                times.append(time.perf_counter() - t0)
        model.eval()
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            t0 = time.perf_counter()
            for chunk in xe.split(500):
                model(chunk)
            infer = time.perf_counter() - t0
        params = sum(p.numel() for p in model.parameters())
        print(f"{name:28s} params {params:>9,}  train {args.batch / statistics.median(times):7.1f} samples/s  "
              f"inference {1000 / infer:7.1f} samples/s")


if __name__ == "__main__":
    main()
