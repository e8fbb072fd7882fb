"""Shared test helpers: run the CLI in a subprocess, with outputs and caches in a per-session temporary folder."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# A captcha run small enough for a test: 24x64 images, a few hundred samples, the faithful CNN with 2 blocks.
TINY_MODEL = ["model=captcha_cnn", "model.blocks=2", "optim=adam", "sched=none"]
TINY_DATA = ["dataset.width=64", "dataset.height=24", "dataset.train_size=256", "dataset.val_size=64",
             "dataset.test_size=64", "dataset.batch_size=32", "dataset.render_workers=1"]
TINY_TRAINER = ["trainer.max_epochs=2", "trainer.log_every_n_steps=2", "trainer.progress=false"]
TINY_CAPTCHA = TINY_MODEL + TINY_DATA + TINY_TRAINER


@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("work")


def cli(workdir: Path, *args: str, timeout: int = 300, env: dict | None = None, cmd: list[str] | None = None,
        check: bool = True, input_text: str | None = None) -> subprocess.CompletedProcess:
    """`python -m trainer ARGS` with outputs and caches under `workdir` (and `input_text` on its standard input);
    returns the finished process."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    full_env.pop("TRAINER_RUN_STAMP", None)
    command = (cmd or [sys.executable, "-m", "trainer"]) + [
        f"paths.output_dir={workdir / 'outputs'}", f"paths.cache_dir={workdir / 'cache'}",
        f"paths.data_dir={workdir / 'data'}", *args,
    ]
    proc = subprocess.run(command, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout,
                          input=input_text)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nSTDOUT:\n{proc.stdout[-3000:]}\nSTDERR:\n{proc.stderr[-5000:]}")
    return proc


def run_dirs(workdir: Path, task: str = "captcha") -> list[Path]:
    root = workdir / "outputs" / task
    return sorted(p for p in root.iterdir() if p.name[:1].isdigit()) if root.is_dir() else []  # not eval/, predict/


def latest_run(workdir: Path, task: str = "captcha") -> Path:
    dirs = run_dirs(workdir, task)
    assert dirs, f"no run directory under {workdir / 'outputs' / task}"
    return dirs[-1]


def bench_module(name: str):
    """A script of bench/ imported as a module, for tests of the figures docs/results.md quotes from it."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, Path(__file__).parent.parent / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
