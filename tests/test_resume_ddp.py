"""Exactness tests: a run killed with SIGKILL and resumed ends with the same weights as an uninterrupted run, and
two DDP processes on CPU (gloo) reach the weights of one process on the same global batch."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT, TINY_CAPTCHA, TINY_DATA, TINY_TRAINER, cli, latest_run, run_dirs

# Our model (dropout, so RNG state matters), a cosine schedule, clipping; mid-epoch checkpoints so that the kill lands inside an epoch.
RESUMABLE = [*TINY_DATA, *TINY_TRAINER, "model=captcha_crnn", "model.widths=[8,8,8,8]", "model.rnn_hidden=8",
             "model.dropout=0.2", "trainer.max_epochs=3", "trainer.checkpoint_every_n_steps=3",
             "sched=cosine", "trainer.gradient_clip_val=1.0"]


def final_weights(run) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)["net"]


def start_captcha(workdir, *args: str, output=subprocess.PIPE) -> subprocess.Popen:
    """`python -m trainer task=captcha ARGS` in the background (output merged into one text pipe, unless given)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("TRAINER_RUN_STAMP", None)
    command = [sys.executable, "-m", "trainer", f"paths.output_dir={workdir / 'outputs'}",
               f"paths.cache_dir={workdir / 'cache'}", "task=captcha", *args]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=output,
                            stderr=subprocess.STDOUT if output == subprocess.PIPE else output, text=True)


def test_sigkill_then_resume_matches_an_uninterrupted_run(workdir):
    cli(workdir, "task=captcha", *RESUMABLE)
    reference = final_weights(latest_run(workdir))

    before = set(run_dirs(workdir))
    proc = start_captcha(workdir, *RESUMABLE, output=subprocess.DEVNULL)
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


# Rank 1's clock runs five times fast: its own check would cross max_time at a fifth of rank 0's step count.
FAST_CLOCK_ON_RANK_1 = '''
import os, pathlib, time
if os.environ.get("RANK") == "1":
    _real = time.monotonic
    _t0 = _real()
    time.monotonic = lambda: _t0 + 5 * (_real() - _t0)
    pathlib.Path(__file__).with_name("rank1_clock_is_fast").touch()
'''


def _parent(proc_dir: Path) -> int | None:
    try:
        return int((proc_dir / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed missing")
def test_ranks_stop_on_max_time_together_even_when_their_clocks_disagree(workdir, tmp_path):
    """max_time is rank 0's decision: a rank that stopped on its own clock would leave the other blocked in the next
    gradient all-reduce (until gloo's 30-minute timeout)."""
    (tmp_path / "sitecustomize.py").write_text(FAST_CLOCK_ON_RANK_1)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT / "src")])}
    env.pop("TRAINER_RUN_STAMP", None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "trainer",
               f"paths.output_dir={workdir / 'outputs'}", f"paths.cache_dir={workdir / 'cache'}", "task=captcha",
               *TINY_CAPTCHA, "trainer.max_epochs=10000", "trainer.max_time=4"]
    before = set(run_dirs(workdir))
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=400)
    except subprocess.TimeoutExpired:
        # torchrun starts each rank in a session of its own: a hang is ended rank by rank, then torchrun
        ranks = [int(d.name) for d in Path("/proc").iterdir() if d.name.isdigit() and _parent(d) == proc.pid]
        for pid in ranks:
            os.kill(pid, signal.SIGKILL)
        proc.kill()
        proc.communicate()
        pytest.fail("the ranks did not finish together: one stopped on max_time while the other kept training")
    assert proc.returncode == 0, out[-3000:]
    assert (tmp_path / "rank1_clock_is_fast").is_file()  # the skew really was in place
    run = next(iter(set(run_dirs(workdir)) - before))
    assert "finished (max_time=4)" in (run / "run.log").read_text()


def test_ctrl_c_saves_the_current_step_and_resume_matches_an_uninterrupted_run(workdir):
    """SIGINT mid-epoch, with no mid-epoch checkpointing configured: last.pt is written at the interrupted step."""
    args = [a for a in RESUMABLE if not a.startswith("trainer.checkpoint_every_n_steps")]
    cli(workdir, "task=captcha", *args)
    reference = final_weights(latest_run(workdir))

    before = set(run_dirs(workdir))
    proc = start_captcha(workdir, *args, "trainer.log_every_n_steps=1")
    for line in proc.stdout:  # the first logged step of epoch 1
        if "epoch 1 step 2:" in line:
            proc.send_signal(signal.SIGINT)
            break
    rest = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, rest[-2000:]
    run = (set(run_dirs(workdir)) - before).pop()
    assert f"interrupted: resume with: python -m trainer resume={run}" in rest
    counters = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["counters"]
    assert counters["epoch"] == 0 and 2 <= counters["batch_in_epoch"] < 8, counters  # inside the first epoch

    cli(workdir, f"resume={run}")
    resumed = final_weights(run)
    for key in reference:
        torch.testing.assert_close(resumed[key], reference[key], rtol=0, atol=0, msg=key)


def test_ctrl_c_before_any_checkpoint_says_there_is_nothing_to_resume(workdir):
    proc = start_captcha(workdir, *RESUMABLE, "dataset.train_size=5000")
    for line in proc.stdout:
        if "rendering" in line:  # setting up the data, before any training step
            proc.send_signal(signal.SIGINT)
            break
    rest = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, rest[-2000:]
    # (during rendering the line also says what was rendered and kept: the next run continues from there)
    assert "interrupted: " in rest and "nothing to resume" in rest, rest[-2000:]


def test_ctrl_c_in_a_sweep_still_writes_the_summary_of_the_jobs_so_far(workdir):
    before = set((workdir / "outputs" / "multirun").glob("*"))
    proc = start_captcha(workdir, "-m", *TINY_CAPTCHA, "trainer.log_every_n_steps=1", "trainer.max_epochs=1",
                         "seed=1,2,3")
    second_job = False
    for line in proc.stdout:
        second_job = second_job or "#1 :" in line  # Hydra launches the second job
        if second_job and "step 2:" in line:  # ... which trains
            proc.send_signal(signal.SIGINT)
            break
    rest = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, rest[-2000:]
    sweep = (set((workdir / "outputs" / "multirun").glob("*")) - before).pop()
    assert f"interrupted: resume with: python -m trainer resume={sweep / '1'}" in rest, rest[-2000:]
    assert "interrupted: the sweep stopped: the jobs after the last one above did not run" in rest, rest[-2000:]
    assert (sweep / "multirun.yaml").is_file()  # which the message points to
    rows = (sweep / "summary.csv").read_text().splitlines()  # header, job 0, job 1
    assert len(rows) == 3 and ",ok," in rows[1] and ",interrupted," in rows[2], rows
    assert not (sweep / "2").exists()


def torchrun(workdir, *args: str, env_extra: dict | None = None) -> subprocess.Popen:
    """Two ranks under torchrun, in a session of their own (a terminal's Ctrl-C reaches the whole group)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    env.pop("TRAINER_RUN_STAMP", None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "trainer",
               f"paths.output_dir={workdir / 'outputs'}", f"paths.cache_dir={workdir / 'cache'}", *args]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed missing")
def test_ctrl_c_under_torchrun_is_graceful_and_the_resume_names_torchrun(workdir):
    """The terminal's SIGINT reaches every rank at a different step, then torchrun sends SIGTERM: the ranks agree on
    one step, rank 0 writes last.pt there, and the one message says how to resume under torchrun."""
    args = ["task=captcha", *TINY_CAPTCHA, "trainer.max_epochs=8", "trainer.log_every_n_steps=1"]
    cli(workdir, "task=captcha", *TINY_CAPTCHA, "trainer.max_epochs=1")  # the renders, cached by one process
    before = set(run_dirs(workdir))
    proc = torchrun(workdir, *args)
    for line in proc.stdout:
        if "epoch 2 step" in line:
            os.killpg(proc.pid, signal.SIGINT)
            break
    rest = proc.communicate(timeout=120)[0]
    run = (set(run_dirs(workdir)) - before).pop()
    hint = f"resume with: torchrun --nproc_per_node=2 -m trainer resume={run}"
    assert rest.count(hint) == 1, rest[-3000:]
    counters = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["counters"]
    assert counters["epoch"] >= 1 and not counters["stage_done"], counters
    proc = torchrun(workdir, f"resume={run}")
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, out[-3000:]
    assert f"resumed stage 'train' at epoch {counters['epoch'] + 1}, step {counters['step']}" in out
    assert "finished (max_epochs=8)" in (run / "run.log").read_text()


SAME_SECOND = '''
import time
_real = time.strftime
time.strftime = lambda fmt, *a: "2026-01-01_00-00-00" if fmt == "%Y-%m-%d_%H-%M-%S" else _real(fmt, *a)
'''


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed missing")
def test_two_torchrun_runs_in_the_same_second_get_two_folders(workdir, tmp_path):
    (tmp_path / "sitecustomize.py").write_text(SAME_SECOND)  # every clock says the same second
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT / "src")])}
    out = workdir / "same_second"
    procs = [torchrun(workdir, "task=captcha", *TINY_CAPTCHA, "debug=fast_dev_run", f"paths.output_dir={out}",
                      env_extra=env) for _ in range(2)]
    for proc in procs:
        text = proc.communicate(timeout=300)[0]
        assert proc.returncode == 0, text[-3000:]
    folders = sorted(p.name for p in (out / "captcha").iterdir())
    assert folders == ["2026-01-01_00-00-00", "2026-01-01_00-00-00_1"], folders


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed missing")
def test_a_refused_resume_under_torchrun_is_one_line(workdir):
    cli(workdir, "task=captcha", *TINY_CAPTCHA, "trainer.max_epochs=1")
    run = latest_run(workdir)
    proc = torchrun(workdir, f"resume={run}")
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode != 0
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "that run has finished" in errors[0], out[-3000:]
