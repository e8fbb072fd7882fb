"""Exactness tests: a run killed with SIGKILL and resumed ends with the same weights as an uninterrupted run, and
two DDP processes on CPU (gloo) reach the weights of one process on the same global batch."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT, TINY_CAPTCHA, TINY_DATA, TINY_TRAINER, cli, latest_run, run_dirs

# Our model (dropout, so RNG state matters), a cosine schedule, clipping; mid-epoch checkpoints so that the kill lands inside an epoch.
RESUMABLE = [*TINY_DATA, *TINY_TRAINER, "model=captcha_crnn", "model.widths=[8,8,8,8]", "model.rnn_hidden=8",
             "model.dropout=0.2", "trainer.max_epochs=3", "trainer.checkpoint_every_n_steps=3",
             "sched=cosine", "trainer.gradient_clip_val=1.0"]


def final_weights(run) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)["net"]


def test_sigkill_then_resume_matches_an_uninterrupted_run(workdir):
    cli(workdir, "task=captcha", *RESUMABLE)
    reference = final_weights(latest_run(workdir))

    before = set(run_dirs(workdir))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("TRAINER_RUN_STAMP", None)
    command = [sys.executable, "-m", "trainer", f"paths.output_dir={workdir / 'outputs'}",
               f"paths.cache_dir={workdir / 'cache'}", "task=captcha", *RESUMABLE]
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    run = None
    while time.time() < deadline and proc.poll() is None:
        new = set(run_dirs(workdir)) - before
        if new and (next(iter(new)) / "checkpoints" / "last.pt").exists():
            run = next(iter(new))
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait()
    assert run is not None and proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    killed_at = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["counters"]
    assert killed_at["step"] < 24  # 3 epochs x 8 steps: it really was cut short

    cli(workdir, f"resume={run}")
    resumed = final_weights(run)
    assert resumed.keys() == reference.keys()
    for key in reference:
        torch.testing.assert_close(resumed[key], reference[key], rtol=0, atol=0, msg=key)
    assert len(set(run_dirs(workdir)) - before) == 1  # resumed into the same run directory


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed missing")
def test_two_ddp_processes_match_one_process_on_the_same_global_batch(workdir):
    args = ["task=captcha", *TINY_CAPTCHA, "dataset.batch_size=32", "trainer.max_epochs=2"]
    cli(workdir, *args)
    single = final_weights(latest_run(workdir))

    before = set(run_dirs(workdir))
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "trainer"]
    cli(workdir, *args, cmd=torchrun, timeout=400)
    new = set(run_dirs(workdir)) - before
    assert len(new) == 1, f"expected one run directory for two ranks, got {new}"
    ddp = final_weights(next(iter(new)))
    for key in single:
        torch.testing.assert_close(ddp[key], single[key], rtol=1e-4, atol=1e-5, msg=key)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed missing")
def test_an_error_on_every_rank_is_one_line_under_torchrun(workdir):
    """The one-line error reaches the user under torchrun. The abort at exit that distributed.shutdown() prevents
    struck 2 of 68 two-rank runs on a loaded CPU (bench/ddp_exit.py), so this test catches its return only rarely."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "trainer"]
    proc = cli(workdir, "task=captcha", *TINY_CAPTCHA, "dataset.batch_size=33", cmd=torchrun, timeout=400, check=False)
    assert proc.returncode != 0
    assert "error: dataset.batch_size=33 is the global batch; it must divide by 2 ranks" in proc.stdout + proc.stderr
    # each rank exits (torchrun may SIGTERM the slower one once the first has failed); none aborts
    assert "terminate called" not in proc.stderr and "(SIGABRT)" not in proc.stderr
