"""How often a two-rank torchrun job dies at exit: the figure behind distributed.shutdown()'s docstring.

Runs the tiny captcha job of tests/test_resume_ddp.py under `torchrun --nproc_per_node=2` N times, optionally beside
a CPU hog (the abort was seen only on a loaded machine, as in CI), and counts the runs where a rank aborted
("terminate called without an active exception" / SIGABRT) or the job failed otherwise. Compare two commits by
running it in each checkout.

    .venv/bin/python bench/ddp_exit.py [runs=60] [--hog]
"""
from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from conftest import TINY_CAPTCHA  # noqa: E402  (the test's own tiny job, not a copy of it)

TINY = ["task=captcha", *TINY_CAPTCHA, "dataset.batch_size=32", "trainer.max_epochs=2"]  # as test_resume_ddp runs it


def hog() -> None:
    while True:
        pass


def main() -> None:
    runs = int(next((a for a in sys.argv[1:] if a.isdigit()), 60))
    spinner = multiprocessing.Process(target=hog, daemon=True) if "--hog" in sys.argv else None
    if spinner:
        spinner.start()
    aborted = failed = 0
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as work:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}
        env.pop("TRAINER_RUN_STAMP", None)
        for i in range(runs):
            proc = subprocess.run(
                [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "trainer",
                 f"paths.output_dir={work}/outputs", f"paths.cache_dir={work}/cache", f"paths.data_dir={work}/data",
                 *TINY], cwd=ROOT, env=env, capture_output=True, text=True)
            if proc.returncode:
                abort = "terminate called" in proc.stderr or "(SIGABRT)" in proc.stderr
                aborted += abort
                failed += not abort
                print(f"run {i + 1}: exit {proc.returncode}, {'a rank aborted' if abort else 'failed'}", flush=True)
    if spinner:
        spinner.terminate()
    print(f"{runs} two-rank runs{' beside a CPU hog' if spinner else ''} in {time.monotonic() - t0:.0f} s: "
          f"{aborted} with a rank aborted at exit, {failed} failed otherwise")


if __name__ == "__main__":
    main()
