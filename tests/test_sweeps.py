"""Sweeps and scale-out (issue 18): sweeps that resume after a kill (a grid, then under joblib; an Optuna search,
then under submitit_local), a two-job sweep under torchrun on two rendezvous "nodes", SLURM up to the submitit
boundary, the job-process fix for Hydra #964, and the sweep's table and plots.

The CLI runs cost a torch import each, so each one does several things at once; what needs no training is tested
in process on folders built here.
"""
from __future__ import annotations

import csv
import io
import json
import multiprocessing
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import ROOT, TINY_CAPTCHA, cli
from trainer import sweep, sweeper
from trainer.errors import UserError

# 1 epoch of 256 training captchas is 8 steps; killed jobs run 2 epochs, checkpointing every 4 steps
KILLABLE = ["trainer.max_epochs=2", "trainer.checkpoint_every_n_steps=4"]


def _env() -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    env.pop("TRAINER_RUN_STAMP", None)
    return env


def _paths(workdir: Path) -> list[str]:
    return [f"paths.output_dir={workdir / 'outputs'}", f"paths.cache_dir={workdir / 'cache'}",
            f"paths.data_dir={workdir / 'data'}"]


def _kill_when(path: Path, args: list[str], workdir: Path, timeout: float = 240) -> None:
    """Run the CLI and SIGKILL it (its whole process group, as a lost node or `kill -9` would) as soon as `path`
    exists: in the middle of a job, after its first checkpoint."""
    proc = subprocess.Popen([sys.executable, "-m", "trainer", *_paths(workdir), *args], cwd=ROOT, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    start = time.monotonic()
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"ended (exit {proc.returncode}) before {path} appeared:\n{proc.stderr.read()[-3000:]}")
        assert time.monotonic() - start < timeout, f"{path} did not appear in {timeout}s"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()


def _summary(sweep_dir: Path) -> list[dict]:
    return list(csv.DictReader(open(sweep_dir / "summary.csv")))


# ---- the grid: killed in job 1, resumed with resume=SWEEP_DIR under joblib ------------------------------------------
def test_grid_killed_in_a_job_resumes_under_joblib_with_worker_processes(workdir):
    """Job 0 finishes, job 1 is killed after its first checkpoint, job 2 never starts. `resume=SWEEP_DIR` (the
    sweep's own command line, replayed) under hydra/launcher=joblib skips job 0, resumes job 1 from its last.pt and
    runs job 2, in parallel, each with a DataLoader worker; job 2 renders a training split of its own with two
    render processes inside joblib's worker (Hydra #964)."""
    sweep_dir = workdir / "sweeps" / "grid"
    args = ["-m", "task=captcha", *TINY_CAPTCHA, *KILLABLE, "dataset.num_workers=1", "dataset.render_workers=2",
            "dataset.train_size=256,250,510", f"hydra.sweep.dir={sweep_dir}"]
    _kill_when(sweep_dir / "1" / "checkpoints" / "last.pt", args, workdir)
    first = json.loads((sweep_dir / "0" / "results.json").read_text())
    assert first["status"] == "ok" and not (sweep_dir / "1" / "results.json").exists()
    done_at = (sweep_dir / "0" / "results.json").stat().st_mtime_ns

    proc = cli(workdir, f"resume={sweep_dir}", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
    assert f"resuming the sweep in {sweep_dir}: job 0 finished; job 1 cut off: resumes from its last.pt" in proc.stderr
    assert (sweep_dir / "0" / "results.json").stat().st_mtime_ns == done_at  # skipped, untouched
    rows = _summary(sweep_dir)
    assert [r["status"] for r in rows] == ["ok", "ok", "ok"] and [r["dataset.train_size"] for r in rows] == [
        "256", "250", "510"]
    assert re.search(r"resumed stage 'train' at epoch \d, step \d+", (sweep_dir / "1" / "run.log").read_text())
    steps = [int(r["global_step"]) for r in csv.DictReader(open(sweep_dir / "1" / "metrics.csv")) if r["train/loss"]]
    last = json.loads((sweep_dir / "1" / "results.json").read_text())["steps"]
    assert steps == list(range(2, last + 1, 2)) and last >= 14  # every step once, those before the kill too
    assert "rendering 510 train captchas" in (sweep_dir / "2" / "run.log").read_text() and \
        "with 2 process(es)" in (sweep_dir / "2" / "run.log").read_text()
    # the job's own record stays the original; the resume's goes beside it
    record = list(OmegaConf.load(sweep_dir / "1" / ".hydra" / "overrides.yaml"))
    assert "dataset.train_size=250" in record and not any(o.startswith("resume=") for o in record)
    assert len(list((sweep_dir / "1" / ".hydra").glob("resume-*/overrides.yaml"))) == 1
    assert (sweep_dir / "1" / "command.txt").read_text().splitlines()[-1].endswith(f"resume={sweep_dir / '1'}")
    # the sweep's own record stays the one a later resume replays; this one is beside it
    assert len(list(sweep_dir.glob("multirun-resume-*.yaml"))) == 1


# ---- Optuna: killed in trial 1, continued by the same command under submitit_local -----------------------------------
def test_optuna_search_killed_in_a_trial_continues_from_its_store(workdir):
    """hparams_search=captcha_optuna, 3 trials: killed in trial 1 after its first checkpoint. The same command line
    with hydra/launcher=submitit_local and 2 trials at a time runs trial 1 again under its own number and parameters
    from its last.pt, beside trial 2; the study (SQLite in the sweep folder) ends with 3 complete trials."""
    import optuna

    sweep_dir = workdir / "sweeps" / "optuna"
    args = ["-m", "task=captcha", *TINY_CAPTCHA, *KILLABLE, "hparams_search=captcha_optuna",
            "hydra.sweeper.n_trials=3", f"hydra.sweep.dir={sweep_dir}"]
    _kill_when(sweep_dir / "1" / "checkpoints" / "last.pt", args, workdir)
    storage = f"sqlite:///{sweep_dir / 'optuna.db'}"
    study = optuna.load_study(study_name="captcha", storage=storage)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "RUNNING"]
    params = study.trials[1].params
    assert set(params) == {"optim.lr", "optim.weight_decay"}  # dataset.batch_size=32 given: fixed, not searched

    proc = cli(workdir, *args, "hydra/launcher=submitit_local", "hydra.sweeper.n_jobs=2")
    assert "1 of 3 trials finished; trial 1 cut off: resumes from its last.pt" in proc.stderr
    study = optuna.load_study(study_name="captcha", storage=storage)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3 and study.trials[1].params == params
    assert re.search(r"resumed stage 'train' at epoch \d, step \d+", (sweep_dir / "1" / "run.log").read_text())
    overrides = OmegaConf.load(sweep_dir / "1" / ".hydra" / "overrides.yaml")
    assert f"optim.lr={params['optim.lr']!r}" in list(overrides)
    for t in study.trials:  # each trial's value is its job's best monitored metric
        assert t.value == json.loads((sweep_dir / str(t.number) / "results.json").read_text())["best"]
    assert OmegaConf.load(sweep_dir / "optimization_results.yaml").trials.complete == 3
    assert [r["status"] for r in _summary(sweep_dir)] == ["ok"] * 3


# ---- torchrun: two "nodes" of one process each, a two-job sweep -------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_job_sweep_under_torchrun_on_two_rendezvous_nodes(workdir):
    """torchrun --nnodes=2 (c10d rendezvous, one process per node, two agents on this machine): one sweep folder,
    one folder and one config per job, written by rank 0 (lightning-hydra-template #393: a folder per rank)."""
    out = workdir / "ddp_sweep"
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
               "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{_free_port()}", "--rdzv-id=sweep-test",
               "-m", "trainer", f"paths.output_dir={out}", f"paths.cache_dir={workdir / 'cache'}",
               f"paths.data_dir={workdir / 'data'}", "-m", "task=captcha", *TINY_CAPTCHA, "trainer.max_epochs=1",
               "seed=1,2"]
    nodes = [subprocess.Popen(command, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in nodes]
    assert all(p.returncode == 0 for p in nodes), outputs[0][-3000:] + outputs[1][-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["multirun"]  # no stray run folder
    (sweep_dir,) = list((out / "multirun").iterdir())
    assert sorted(p.name for p in sweep_dir.iterdir()) == ["0", "1", "multirun.yaml", "summary.csv"]
    for job in ("0", "1"):
        assert json.loads((sweep_dir / job / "env.json").read_text())["world_size"] == 2
        assert len((sweep_dir / job / "command.txt").read_text().splitlines()) == 1  # written once, by rank 0
        assert sorted(p.name for p in sweep_dir.glob(f"{job}/**/config.yaml")) == ["config.yaml", "config.yaml"]
    record = OmegaConf.load(sweep_dir / "multirun.yaml").hydra.overrides.hydra  # rank 0's, not another rank's
    assert "hydra/job_logging=disabled" not in list(record)
    assert [r["status"] for r in _summary(sweep_dir)] == ["ok", "ok"]


# ---- SLURM: up to the submitit boundary --------------------------------------------------------------------------------
def test_slurm_sweep_composes_and_runs_up_to_the_submitit_boundary(workdir, tmp_path, monkeypatch):
    """hydra/launcher=submitit_slurm in process, with submitit's executor replaced at the boundary: the sbatch
    parameters it is given, and the job callable pickled as submitit pickles it, then run here as a node would."""
    import cloudpickle
    import submitit

    from trainer import cli as cli_module
    from trainer import job as job_module

    calls: dict = {}

    class Job:
        def __init__(self, result):
            self.result = result

        def results(self):
            return [self.result]

    class Executor:
        def __init__(self, cluster, folder, **params):
            calls["init"] = {"cluster": cluster, "folder": folder, **params}

        def update_parameters(self, **params):
            calls["params"] = params

        def map_array(self, fn, *args):
            calls["jobs"] = list(zip(*args))
            fn = cloudpickle.loads(cloudpickle.dumps(fn))  # what reaches the node
            return [Job(fn(*job)) for job in zip(*args)]

    class Environment:
        job_id = "4242"

    monkeypatch.setattr(submitit, "AutoExecutor", Executor)
    monkeypatch.setattr(submitit, "JobEnvironment", Environment)
    monkeypatch.setattr(job_module, "failures", [])
    monkeypatch.setattr(sys, "argv", ["trainer"])
    monkeypatch.setenv("TRAINER_RUN_STAMP", "slurm-test")  # (the process's stamp: not left to later tests)
    sweep_dir = tmp_path / "slurm"
    slurm = ["hydra/launcher=submitit_slurm", "hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_node=1",
             "hydra.launcher.cpus_per_task=4", "hydra.launcher.timeout_min=30", "hydra.launcher.mem_gb=16"]
    base = ["-m", *_paths(workdir), "task=captcha", *TINY_CAPTCHA, "debug=fast_dev_run", "seed=1",
            f"hydra.sweep.dir={sweep_dir}", *slurm]
    cli_module.main(base)
    assert calls["init"] == {"cluster": "slurm", "folder": f"{sweep_dir}/.submitit/%j", "slurm_max_num_timeout": 0}
    params = calls["params"]
    assert (params["slurm_partition"], params["gpus_per_node"], params["cpus_per_task"], params["timeout_min"],
            params["mem_gb"], params["tasks_per_node"]) == ("gpu", 1, 4, 30, 16, 1)
    (job,) = calls["jobs"]
    assert job[1:3] == ("hydra.sweep.dir", 0) and "hydra.sweep.subdir=0" in job[0] and "seed=1" in job[0]
    assert json.loads((sweep_dir / "0" / "results.json").read_text())["status"] == "ok"
    # several tasks per node would each run the whole job as rank 0: refused in one line
    with pytest.raises(SystemExit) as e:
        cli_module.main([*base, "hydra.launcher.tasks_per_node=2", f"hydra.sweep.dir={tmp_path / 'slurm2'}"])
    assert e.value.code == 2


# ---- Hydra #964: a launcher's worker process may start processes of its own ----------------------------------------
def _in_pool_worker() -> tuple[bool, list[int]]:
    """Run in a multiprocessing pool's (daemonic) worker, as joblib's multiprocessing backend runs a job."""
    daemonic = multiprocessing.current_process().daemon
    sweep.JobProcess().on_job_start(config=None)
    with multiprocessing.get_context("fork").Pool(2) as pool:
        return daemonic, pool.map(abs, [-1, -2])


def test_job_process_lets_a_daemonic_worker_start_children():
    with multiprocessing.get_context("fork").Pool(1) as pool:
        assert pool.apply(_in_pool_worker) == (True, [1, 2])


# ---- before Hydra: resume=SWEEP_DIR, and what each job folder holds --------------------------------------------------
def _job(sweep_dir: Path, num: int, overrides: list[str], status: str | None = None, last: bool = False) -> Path:
    job = sweep_dir / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(OmegaConf.to_yaml(overrides))
    if status:
        (job / "results.json").write_text(json.dumps({"status": status}))
    if last:
        (job / "checkpoints").mkdir()
        (job / "checkpoints" / "last.pt").write_bytes(b"")
    return job


def test_plan_of_each_job_from_its_folder(tmp_path):
    plan = lambda n, o: sweeper.plan_job(tmp_path, n, o)  # noqa: E731
    _job(tmp_path, 0, ["task=captcha", "seed=1"], "ok")
    _job(tmp_path, 1, ["task=captcha", "seed=2"], last=True)  # killed: no results.json
    _job(tmp_path, 2, ["task=captcha", "seed=3"], "interrupted", last=True)  # Ctrl-C
    _job(tmp_path, 3, ["task=captcha", "seed=4"], "failed", last=True)
    _job(tmp_path, 4, ["task=captcha", "seed=5"])  # killed before its first checkpoint
    assert plan(0, ["seed=1", "task=captcha"]).action == "skip"  # (the order of the overrides is not the job)
    assert [plan(n, ["task=captcha", f"seed={n + 1}"]).action for n in range(1, 6)] == [
        "resume", "resume", "rerun", "rerun", "run"]
    with pytest.raises(UserError, match=r"0 ran `task=captcha seed=1`, but job 0 of this sweep is `task=captcha"):
        plan(0, ["task=captcha", "seed=9"])
    # a job folder a live process works in (job._hold_run_folder's lock)
    import fcntl

    with open(tmp_path / "1" / ".lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("12345\n")
        held.flush()
        with pytest.raises(UserError, match=r"in use by another process \(pid 12345\)"):
            plan(1, ["task=captcha", "seed=2"])
    assert plan(1, ["task=captcha", "seed=2"]).action == "resume"
    # a job run again from the start keeps its earlier checkpoints apart
    sweeper._set_aside(tmp_path / "3", "STAMP")
    assert (tmp_path / "3" / "checkpoints.before-STAMP" / "last.pt").is_file()


def test_resume_sweep_replays_the_sweeps_own_command_line(tmp_path):
    sweep_dir = tmp_path / "my sweep"  # (a path that must be quoted in an override)
    sweep_dir.mkdir()
    record = {"hydra": {"overrides": {"task": ["task=captcha", "optim.lr=1e-3,3e-4"],
                                      "hydra": ["hydra/launcher=joblib", "hydra.sweep.dir=/elsewhere"]}}}
    OmegaConf.save(OmegaConf.create(record), sweep_dir / "multirun.yaml")
    overrides, flags, source = sweeper.resume_sweep_overrides([f"resume={sweep_dir}", "hydra.launcher.n_jobs=2"], [])
    assert source == sweep_dir and flags == ["-m"]
    assert overrides == ["task=captcha", "optim.lr=1e-3,3e-4", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                         f"hydra.sweep.dir='{sweep_dir}'"]
    # a run folder is resume.py's; with -m it is refused
    run = _job(tmp_path, 0, ["task=captcha"])
    assert sweeper.resume_sweep_overrides([f"resume={run}"], []) == ([f"resume={run}"], [], None)
    with pytest.raises(UserError, match="resume it without -m"):
        sweeper.resume_sweep_overrides([f"resume={run}"], ["-m"])
    # what a replayed run folder may not set, a replayed sweep folder may not either (trust.py)
    record["hydra"]["overrides"]["hydra"].append("hydra/job_logging=custom")
    OmegaConf.save(OmegaConf.create(record), sweep_dir / "multirun.yaml")
    with pytest.raises(UserError, match="configures logging or the config search path"):
        sweeper.resume_sweep_overrides([f"resume={sweep_dir}"], [])


def test_search_space_in_hydra_optuna_sweepers_grammar():
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    space, fixed = sweeper.search_space(["task=captcha", "optim.lr=tag(log, interval(1e-4, 1e-2))",
                                         "model.p=interval(0.0, 0.5)", "dataset.batch_size=choice(32, 64)",
                                         "model.blocks=range(1, 8, 3)", "seed=1", "seed=range(1,3)",
                                         "dataset.width=choice(64,96)", "dataset.width=64"])
    assert space == {"optim.lr": FloatDistribution(1e-4, 1e-2, log=True), "model.p": FloatDistribution(0.0, 0.5),
                     "dataset.batch_size": CategoricalDistribution([32, 64]),
                     "model.blocks": IntDistribution(1, 7, step=3), "seed": IntDistribution(1, 2)}
    assert fixed == {"task": "captcha", "dataset.width": "64"}  # a later fixed value wins over a search space
    corners = sweeper.corners(space, fixed)
    assert corners[0] == ["task=captcha", "dataset.width=64", "optim.lr=0.0001", "model.p=0.0",
                          "dataset.batch_size=32", "model.blocks=1", "seed=1"]
    assert ["task=captcha", "dataset.width=64", "optim.lr=0.01", "model.p=0.0", "dataset.batch_size=32",
            "model.blocks=1", "seed=1"] in corners and len(corners) == 6
    with pytest.raises(UserError, match="cannot parse the search space"):
        sweeper.search_space(["optim.lr=interval(1e-4"])


def test_search_configs_compose_for_their_tasks():
    """Each hparams_search config composes with its task, and its whole search space does (every choice, each end
    of each interval), as the sweeper checks before the first trial."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="trainer.conf", version_base="1.3"):
        for task in ("captcha", "segmentation"):
            cfg = compose("config", overrides=[f"task={task}", f"hparams_search={task}_optuna"],
                          return_hydra_config=True)
            assert cfg.hydra.sweeper._target_ == "hydra_plugins.trainer_sweepers.OptunaSweeper"
            params = [f"{k}={v}" for k, v in cfg.hydra.sweeper.params.items()]
            space, fixed = sweeper.search_space(params)
            assert len(space) >= 3 and not fixed
            for job in sweeper.corners(space, {"task": task}):
                compose("config", overrides=job)


# ---- the sweep's table and plots ---------------------------------------------------------------------------------------
def _report_sweep(root: Path) -> Path:
    """Three jobs of a staged task with long override names, per-class metrics, one failed."""
    sweep_dir = root / "report"
    lrs = ["1e-4", "1e-3", "1e-2"]
    for n, lr in enumerate(lrs):
        job = _job(sweep_dir, n, ["task=dog_finetune", f"stages.unfrozen.optim.lr={lr}",
                                  f"stages.frozen.optim.lr={lr}", f"dataset.batch_size={32 * (n + 1)}",
                                  f"model.noise_shape={'[1,null]' if n else 'null'}"])
        if n == 2:
            (job / "results.json").write_text(json.dumps({"status": "failed", "error": "the loss is NaN " * 20}))
            continue
        test = {"test/loss": 0.5, "test/acc": 0.8 + n / 100, "test/macro_f1": 0.7, "test/acc_beagle": 0.9,
                "test/acc_pug": 0.7, "test/top5_acc": 0.95, "test/char_acc": 0.9, "test/f1_oov": 0.2}
        (job / "results.json").write_text(json.dumps({"status": "ok", "monitor": "val/acc", "best": 0.75 + n / 10,
                                                      "test": test, "fit_seconds": 12.5}))
        with open(job / "metrics.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["stage", "epoch", "step", "global_step", "train/loss", "val/acc"])
            w.writerows([["frozen", 1, 5, 5, 2.0, ""], ["frozen", 1, 5, 5, "", 0.5], ["unfrozen", 1, 5, 10, 1.0, ""],
                         ["unfrozen", 1, 5, 10, "", 0.75 + n / 10], ["unfrozen", 2, 10, 15, "", 0.7]])
    return sweep_dir


def test_sweep_table_fits_100_columns(tmp_path, monkeypatch):
    from rich.console import Console

    sweep_dir = _report_sweep(tmp_path)
    rows = sweep.write_summary(sweep_dir, show=False)
    assert [r["status"] for r in rows] == ["ok", "ok", "failed"]
    assert rows[1]["val/acc"] == 0.85 and rows[1]["final val/acc"] == 0.7  # best, and at the last validation
    assert "test/acc_beagle" not in rows[0] and "test/char_acc" in rows[0] and "test/f1_oov" in rows[0]
    assert "test/acc_beagle" in sweep.collect(sweep_dir, per_class=True)[0]
    header = next(csv.reader(open(sweep_dir / "summary.csv")))
    assert header[:5] == ["job", "overrides", "status", "val/acc", "final val/acc"]
    assert "stages.unfrozen.optim.lr" in header and "test/acc_pug" not in header

    heading, table, notes = sweep.render(rows, sweep_dir, width=100)
    shown = Console(width=100, file=io.StringIO(), record=True, markup=False)
    shown.print(table)
    lines = shown.export_text().splitlines()
    assert max(map(len, lines + notes)) <= 100 and "…" not in "".join(lines)  # nothing cut inside a cell
    text = "\n".join(lines)
    # the override names cut to initials, the overrides wrapped, the test columns left out but test/acc
    assert "u.o.lr=1e-3" in text and "f.o.lr=1e-4" in text and "noise_shape=[1,null]" in text
    assert "best val/acc" in text and "final val/acc" in text and "test/acc" in text and "test/loss" not in text
    said = " ".join(notes)
    assert "overrides: u.o.lr = stages.unfrozen.optim.lr, f.o.lr = stages.frozen.optim.lr" in said
    assert "left out at 100 columns: " in said and "test/loss" in said and "fit_s" in said
    assert notes[-1].startswith("job 2: the loss is NaN") and len(notes[-1]) == 100
    assert heading == f"sweep: {sweep_dir} (1 overrides common to every job: see summary.csv)"
    # a narrow sweep keeps its full names and every column
    assert sweep.abbreviations(["optim.lr", "model.lr"]) == {"optim.lr": "optim.lr", "model.lr": "model.lr"}
    assert sweep.abbreviations(["optim.lr", "seed"], initials=True) == {"optim.lr": "lr", "seed": "seed"}


def test_sweep_report_plots_against_each_parameter(tmp_path, capsys):
    from trainer import sweep_report

    sweep_dir = _report_sweep(tmp_path)
    rows = sweep.collect(sweep_dir)
    scales = sweep_report.plot_params(rows, "val/acc", tmp_path / "p.png")
    assert scales == {"stages.unfrozen.optim.lr": "log", "stages.frozen.optim.lr": "log",
                      "dataset.batch_size": "linear", "model.noise_shape": "category"}
    assert sweep_report.plot_curves(rows, "val/acc", tmp_path / "c.png") == 2  # the failed job has no metrics.csv
    sweep_report.main([str(sweep_dir), "--width", "100"])
    out = capsys.readouterr().out
    assert all((sweep_dir / name).is_file() for name in ("summary.csv", "params.png", "curves.png", "report.csv"))
    assert "params.png" in out and "curves.png" in out


def test_ctrl_c_in_a_sweep_says_how_to_resume_it(tmp_path, monkeypatch, capsys):
    """In process: a KeyboardInterrupt that reaches main() in a sweep writes the table of the jobs so far and ends
    with the command that resumes the sweep."""
    from trainer import cli as cli_module
    from trainer import job as job_module

    sweep_dir = tmp_path / "sweep"
    _job(sweep_dir, 0, ["seed=1"], "ok")
    _job(sweep_dir, 1, ["seed=2"], last=True)
    (sweep_dir / "1" / "command.txt").write_text("python -m trainer seed=2\n")

    def interrupted(argv):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_module, "_main", interrupted)
    monkeypatch.setattr(job_module, "sweep_dir", sweep_dir)
    with pytest.raises(SystemExit) as e:
        cli_module.main([])
    err = capsys.readouterr().err
    assert e.value.code == 130 and err.strip().splitlines()[-1].endswith(f"python -m trainer resume={sweep_dir}")
    assert [r["status"] for r in _summary(sweep_dir)] == ["ok", "cut off"]
