"""Kill-and-resume trials: a run SIGKILLed at a random moment and resumed must end bit-identical to an uninterrupted
run (single process, and two DDP ranks under torchrun). Prints each trial and the count that matched.

    python bench/kill_resume.py [--trials 10] [--ddp-trials 4]

Tiny captcha settings with dropout, a cosine schedule, clipping and mid-epoch checkpoints, so that a kill lands
inside an epoch and every piece of state (RNG, schedule, optimiser, counters) has to come back exactly.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["task=captcha", "dataset.width=64", "dataset.height=24", "dataset.train_size=512", "dataset.val_size=64",
        "dataset.test_size=64", "dataset.batch_size=32", "dataset.render_workers=1", "model=captcha_crnn",
        "model.widths=[8,8,8,8]", "model.rnn_hidden=8", "model.dropout=0.2", "trainer.max_epochs=3",
        "trainer.checkpoint_every_n_steps=3", "sched=cosine", "trainer.gradient_clip_val=1.0", "trainer.progress=false"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def command(work: Path, launcher: list[str], *extra: str) -> list[str]:
    return [*launcher, "-m", "trainer", f"paths.output_dir={work / 'outputs'}", f"paths.cache_dir={work / 'cache'}",
            *extra]


def runs(work: Path) -> set[Path]:
    root = work / "outputs" / "captcha"
    return {p for p in root.iterdir() if p.name[:1].isdigit()} if root.is_dir() else set()


def weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)["net"]


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def kill_job(proc: subprocess.Popen) -> None:
    """SIGKILL the launcher and every process below it, as a lost node would. A kill of torchrun's process group is
    not enough: torch.distributed.run starts each rank in a session of its own, so the ranks would train on."""
    pids = [proc.pid, *descendants(proc.pid)]
    for pid in pids:  # stopped first, so that none of them goes on writing while the others die
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGSTOP)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()


def trial(work: Path, launcher: list[str], reference: dict[str, torch.Tensor], rng: random.Random, env: dict) -> str:
    before = runs(work)
    proc = subprocess.Popen(command(work, launcher, *ARGS), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    run = None
    while proc.poll() is None and run is None:  # the first checkpoint, then a random moment after it
        new = runs(work) - before
        if new and (next(iter(new)) / "checkpoints" / "last.pt").exists():
            run = next(iter(new))
        time.sleep(0.01)
    time.sleep(rng.uniform(0.0, 1.5))
    if proc.poll() is not None:
        return "finished before the kill (not counted)"
    kill_job(proc)
    step = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["counters"]["step"]
    done = subprocess.run(command(work, launcher, f"resume={run}"), cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        said = [line for line in done.stderr.splitlines() if line.strip() and not set(line.strip()) <= set("=-")]
        return f"killed after step {step}; resume FAILED (exit {done.returncode}):\n    " + "\n    ".join(said[:6])
    resumed = weights(run)
    same = resumed.keys() == reference.keys() and all(torch.equal(resumed[k], reference[k]) for k in reference)
    return f"killed after step {step}; resumed {'bit-identical' if same else 'DIFFERENT'}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--ddp-trials", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("TRAINER_RUN_STAMP", None)
    work = Path(tempfile.mkdtemp(prefix="kill-resume-"))
    counted = identical = 0
    for name, launcher, n in (("one process", [sys.executable], args.trials), ("torchrun x2", TORCHRUN, args.ddp_trials)):
        if n == 0:
            continue
        before = runs(work)
        subprocess.run(command(work, launcher, *ARGS), cwd=ROOT, env=env, check=True, capture_output=True)
        reference = weights((runs(work) - before).pop())
        for i in range(n):
            outcome = trial(work, launcher, reference, rng, env)
            print(f"{name} trial {i + 1}: {outcome}", flush=True)
            counted += "not counted" not in outcome
            identical += "bit-identical" in outcome
    print(f"\n{identical} of {counted} kill-and-resume trials bit-identical to the uninterrupted run")
    return 0 if identical == counted else 1


if __name__ == "__main__":
    sys.exit(main())
