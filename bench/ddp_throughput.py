"""Real-loop training throughput on Fashion-MNIST: one process with two threads against two gloo DDP processes
with one thread each (torchrun's default), side by side in one invocation.

Each round runs both launches in alternating order, for each global batch size, on the real data for
`--batches` steps (validation and test off), and reads the loop's own logged samples/s (the first interval, with
warm-up, dropped). Prints per-round rates and the median ratio DDP / single.

    .venv/bin/python bench/ddp_throughput.py --data DATA [--rounds 2] [--batches 150] [--batch-sizes 128 256]

Measured 2026-11-24 at commit 938aa89 (before each step broadcast rank 0's clock: one 8-byte gloo broadcast per
step against ~0.3 s steps) on the 2-core machine, nothing else running (--rounds 2): batch 128, single 414 / 436 against
ddp2 422 / 344 samples/s (ratios 1.02, 0.79); batch 256, single 405 / 432 against ddp2 446 / 474 (1.10, 1.10).
So two processes gain at most ~10%, not enough to change what fits in a time budget.
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RATE = re.compile(r"([0-9.]+) samples/s")


def rate(launcher: list[str], batch_size: int, batches: int, data: str, out: Path) -> float:
    args = ["task=fashion_mnist", f"paths.data_dir={data}", "trainer.max_epochs=1",
            f"trainer.limit_train_batches={batches}", "trainer.limit_val_batches=1", "trainer.test_after_fit=false",
            "trainer.progress=false", f"trainer.log_every_n_steps={batches // 5}", f"dataset.batch_size={batch_size}",
            f"hydra.run.dir={out}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    env.pop("OMP_NUM_THREADS", None)  # torchrun sets 1 per process; the single process keeps torch's default (2)
    subprocess.run(launcher + args, cwd=ROOT, env=env, check=True, capture_output=True, text=True)
    rates = [float(m.group(1)) for m in RATE.finditer((out / "run.log").read_text())]
    return statistics.median(rates[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="folder holding fashion-mnist/")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batches", type=int, default=150)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 256])
    a = parser.parse_args()
    launchers = {"single": [sys.executable, "-m", "trainer"],
                 "ddp2": [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "-m", "trainer"]}
    ratios: dict[int, list[float]] = {b: [] for b in a.batch_sizes}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.rounds):
            for b in a.batch_sizes:
                order = list(launchers) if r % 2 == 0 else list(reversed(launchers))
                got = {name: rate(launchers[name], b, a.batches, a.data, Path(tmp) / f"{r}-{b}-{name}")
                       for name in order}
                ratios[b].append(got["ddp2"] / got["single"])
                print(f"round {r + 1} batch {b}: single {got['single']:.0f}, ddp2 {got['ddp2']:.0f} samples/s, "
                      f"ratio {ratios[b][-1]:.3f}", flush=True)
    for b, rs in ratios.items():
        print(f"batch {b}: median ratio ddp2 / single = {statistics.median(rs):.3f} over {len(rs)} rounds")


if __name__ == "__main__":
    main()
