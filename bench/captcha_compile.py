"""Does `trainer.compile=true` (torch.compile) buy the captcha model more training samples per second on this CPU?

The captcha task is bound by time (30 minutes), so its accuracy follows the samples it sees; this measures the one
switch the trainer already has for speed. The model of task=captcha (CaptchaCRNN, its widths, 36x96 grey input,
batch 128) trains with AdamW and cross-entropy on fixed synthetic batches, eager and compiled, in alternating rounds
in one process, so machine noise hits both alike. Compilation time is reported apart and not counted in the rates.

Prints the median images/s of each and the median of the per-round ratios compiled / eager.

    python bench/captcha_compile.py [--rounds 5] [--steps 20] [--batch-size 128]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from trainer.models.captcha_crnn import CaptchaCRNN


def train_step(model, optimizer, x, y) -> None:
    optimizer.zero_grad(set_to_none=True)
    logits = model(x)
    F.cross_entropy(logits.flatten(0, 1), y.flatten()).backward()
    optimizer.step()


def images_per_second(model, optimizer, x, y, steps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(steps):
        train_step(model, optimizer, x, y)
    return steps * x.shape[0] / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=128)
    args = p.parse_args()

    torch.manual_seed(0)
    x = torch.rand(args.batch_size, 1, 36, 96)
    y = torch.randint(0, 26, (args.batch_size, 4))
    nets, optimizers = {}, {}
    for name in ("eager", "compiled"):
        torch.manual_seed(0)
        nets[name] = CaptchaCRNN(length=4, num_classes=26, in_channels=1).train()
        optimizers[name] = torch.optim.AdamW(nets[name].parameters(), lr=1e-3, weight_decay=0.01)
    models = {"eager": nets["eager"], "compiled": torch.compile(nets["compiled"])}

    t0 = time.perf_counter()
    for _ in range(3):  # the first steps compile (forward, backward, and the optimizer's first step)
        train_step(models["compiled"], optimizers["compiled"], x, y)
    print(f"compiling: {time.perf_counter() - t0:.0f} s (3 warm-up steps)", flush=True)
    for _ in range(3):
        train_step(models["eager"], optimizers["eager"], x, y)

    rates: dict[str, list[float]] = {"eager": [], "compiled": []}
    for r in range(args.rounds):
        for name in ("eager", "compiled") if r % 2 == 0 else ("compiled", "eager"):
            rates[name].append(images_per_second(models[name], optimizers[name], x, y, args.steps))
        print(f"round {r + 1}: eager {rates['eager'][-1]:.0f} images/s, compiled {rates['compiled'][-1]:.0f}",
              flush=True)
    ratios = [c / e for c, e in zip(rates["compiled"], rates["eager"])]
    print(f"median images/s: eager {statistics.median(rates['eager']):.0f}, compiled "
          f"{statistics.median(rates['compiled']):.0f}; compiled / eager, median of {args.rounds} rounds: "
          f"{statistics.median(ratios):.2f}x (threads: {torch.get_num_threads()})")


if __name__ == "__main__":
    main()
