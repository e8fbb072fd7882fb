"""Training throughput of candidate Fashion-MNIST models on this machine (images/s for forward + backward + step).

Random 28x28 grey batches, SGD with momentum, BN in train mode, as in real training; a few warm-up steps, then the
median of timed steps. Pass candidates by name (see CANDIDATES) or run all of them:

    nice -n 15 .venv/bin/python bench/fashion_models.py [--batch-size 256] [--steps 8] [--threads 1] [NAME ...]
    .venv/bin/python bench/fashion_models.py --vs-compile 3 --batch-size 128 r9-24    # eager vs torch.compile

Besides wall-clock throughput it reports throughput per CPU-second of this process (`cpu`): on a machine that
other jobs keep busy, wall time says little, while with --threads 1 the CPU time of a step is close to what the
step costs one core on an idle machine (two threads then give somewhat less than twice that).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from trainer.models.small_resnet import SmallResNet  # noqa: E402


def mobilenet(arch: str, size: int = 56):
    from trainer.models.torchvision_net import TorchvisionClassifier

    return TorchvisionClassifier(arch=arch, num_classes=10, in_channels=1, input_size=size, dropout=0.5)


CANDIDATES = {
    "r9-16": lambda: SmallResNet(stem=16, widths=(32, 64, 128), res_blocks=(1, 0, 1)),
    "r9-24": lambda: SmallResNet(stem=24, widths=(48, 96, 192), res_blocks=(1, 0, 1)),
    "r9-32": lambda: SmallResNet(stem=32, widths=(64, 128, 256), res_blocks=(1, 0, 1)),
    "r9-36": lambda: SmallResNet(stem=36, widths=(72, 144, 288), res_blocks=(1, 0, 1)),
    "r9-48": lambda: SmallResNet(stem=48, widths=(96, 192, 384), res_blocks=(1, 0, 1)),
    "r9-24-r11": lambda: SmallResNet(stem=24, widths=(48, 96, 192), res_blocks=(1, 1, 1)),
    # the whitening filters stay at zero here (no init_from_data): the same cost as set ones, for a throughput count
    "r9-24-airbench": lambda: SmallResNet(stem=24, widths=(48, 96, 192), res_blocks=(1, 0, 1), whiten=3,
                                          pool_first=True, act="gelu"),
    "r9-24-airbench-relu": lambda: SmallResNet(stem=24, widths=(48, 96, 192), res_blocks=(1, 0, 1), whiten=3,
                                               pool_first=True),
    "r9-16-nocl": lambda: SmallResNet(stem=16, widths=(32, 64, 128), res_blocks=(1, 0, 1), channels_last=False),
    "mobilenet_v2@56": lambda: mobilenet("mobilenet_v2"),
    "mobilenet_v3_small@56": lambda: mobilenet("mobilenet_v3_small"),
    "mobilenet_v3_large@56": lambda: mobilenet("mobilenet_v3_large"),
}


def measure(model: torch.nn.Module, batch_size: int, steps: int, compile_model: bool) -> tuple[float, float]:
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch_size, 1, 28, 28)
    y = torch.randint(0, 10, (batch_size,))
    run = torch.compile(model) if compile_model else model
    times, cpu = [], []
    model.train()
    for i in range(steps + 3):
        t0, c0 = time.perf_counter(), time.process_time()
        loss = F.cross_entropy(run(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= 3:
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    model.eval()
    eval_times = []
    with torch.inference_mode():
        for i in range(steps + 2):
            c0 = time.process_time()
            run(x)
            if i >= 2:
                eval_times.append(time.process_time() - c0)
    return (batch_size / statistics.median(times), batch_size / statistics.median(cpu),
            batch_size / statistics.median(eval_times))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("names", nargs="*", default=list(CANDIDATES))
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--vs-compile", type=int, default=0, metavar="ROUNDS",
                        help="each candidate eager and under torch.compile, alternating, for ROUNDS rounds")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.vs_compile:
        for name in args.names:
            compiled = torch.compile(CANDIDATES[name]())  # compiled once; later rounds reuse the code
            for r in range(args.vs_compile):
                eager = measure(CANDIDATES[name](), args.batch_size, args.steps, False)[0]
                fast = measure(compiled, args.batch_size, args.steps, False)[0]
                print(f"{name:<24} round {r + 1}: train {eager:6.0f} img/s eager, {fast:6.0f} compiled "
                      f"({fast / eager:.2f}x)", flush=True)
        return
    for name in args.names:
        model = CANDIDATES[name]()
        params = sum(p.numel() for p in model.parameters())
        wall, cpu, evaluate = measure(model, args.batch_size, args.steps, args.compile)
        print(f"{name:<24} {params / 1e6:6.2f}M params  train {wall:6.0f} img/s wall, {cpu:6.0f} img per CPU-s;  "
              f"eval {evaluate:6.0f} img per CPU-s", flush=True)


if __name__ == "__main__":
    main()
