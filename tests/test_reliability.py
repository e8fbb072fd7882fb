"""Bad input is one line before any work, a resume never records what it did not use, and a diverging run stops with
a command that works (docs/reliability.md keeps the table of what was tried)."""
from __future__ import annotations

import os
import pickle
import shlex
import subprocess

import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from conftest import TINY_CAPTCHA, cli, latest_run
from trainer.callbacks import NonFiniteGuard
from trainer.checkpoint import load
from trainer.checks import validate
from trainer.cli import register_resolvers
from trainer.job import _hold_run_folder, _restart_advice
from trainer.errors import NonFiniteLossError, UserError
from trainer.invocation import CONF_PACKAGE
from trainer.resume import ResumePoint
from trainer.state import Counters


@pytest.mark.parametrize("overrides, words", [
    (["dataset.width=1.5"], "bad value for 'dataset.width': 1.5 is not a whole number"),
    (["dataset.height=0"], "bad value for 'dataset.height': 0 is not >= 8"),
    (["dataset.train_size=0"], "bad value for 'dataset.train_size': 0 is not >= 1"),
    (["task=fashion_mnist", "head.label_smoothing=2"], "bad value for 'head.label_smoothing': 2 is not < 1"),
    (["optim.lr=abc"], "bad value for 'optim.lr': 'abc' is not a number"),
    (["model=captcha_cnn", "model.blocks=-1"], "bad value for 'model.blocks': -1 is not >= 1"),
    # a typo in a later stage: found before the first stage trains, naming the stage
    (["task=dog_finetune", "stages.unfrozen.dataset.augment=hevy"],
     "bad value for 'stages.unfrozen.dataset.augment': 'hevy' is not one of 'none', 'light', 'heavy'"),
    (["task=dog_finetune", "stages.light.trainer.max_epochs=0"],
     "bad value for 'stages.light.trainer.max_epochs': needs max_epochs >= 1 or max_steps >= 1"),
    (["trainer.divergence_factor=0.5"], "bad value for 'trainer.divergence_factor'"),
])
def test_bad_values_are_one_line_when_the_config_is_composed(tmp_path, monkeypatch, overrides, words):
    monkeypatch.chdir(tmp_path)
    register_resolvers()
    with pytest.raises(UserError) as e:
        validate(overrides, multirun=False)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_every_task_composes_and_passes_the_checks(tmp_path, monkeypatch):
    from trainer.invocation import CONF_DIR

    monkeypatch.chdir(tmp_path)
    register_resolvers()
    for task in sorted(p.stem for p in (CONF_DIR / "task").glob("*.yaml")):
        validate([f"task={task}"], multirun=False)


def saved_and_now(**changes):
    register_resolvers()
    with initialize_config_module(config_module=CONF_PACKAGE, version_base="1.3"):
        cfg = compose("config", overrides=["task=captcha", "task_name=captcha"])
    saved = OmegaConf.create(OmegaConf.to_yaml(cfg, resolve=False))
    for key, value in changes.items():
        OmegaConf.update(cfg, key, value)
    return saved, cfg


@pytest.mark.parametrize("key, value, words", [
    ("optim.lr", 0.5, "optim.lr: 0.003 -> 0.5"),
    ("sched.pct_start", 0.5, "sched.pct_start: 0.25 -> 0.5"),
    ("seed", 7, "seed: 42 -> 7"),
])
def test_a_resume_refuses_what_last_pt_would_overrule(key, value, words):
    """last.pt's optimiser, schedule and RNG state win over the config: a changed rate would be recorded in the run's
    config.yaml and never used."""
    saved, now = saved_and_now(**{key: value})
    point = ResumePoint({"config": OmegaConf.to_yaml(saved)}, Counters())
    with pytest.raises(UserError, match=f"resume: {words}.*start a new run from this one's weights"):
        point.check([("train", now)])
    finished = ResumePoint({"config": OmegaConf.to_yaml(saved)}, Counters(stage_done=True))
    finished.check([("train", now)])  # a finished stage is not trained again: nothing is overruled


def test_one_process_at_a_time_in_a_run_folder_and_left_over_temporary_files_go(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    leftover = tmp_path / "checkpoints" / ".last.pt.tmp12345"
    leftover.write_bytes(b"half a checkpoint")
    _hold_run_folder(tmp_path)
    assert not leftover.exists() and (tmp_path / "checkpoints").is_dir()
    with pytest.raises(UserError, match=rf"is in use by another process \(pid {os.getpid()}\)"):
        _hold_run_folder(tmp_path)  # another open of the lock file: as a second `resume=` would


class Payload:
    def __reduce__(self):
        return (os.system, ("true",))


def test_checkpoint_messages_keep_torchs_detail_and_never_its_advice(tmp_path):
    empty = tmp_path / "empty.pt"
    empty.touch()
    with pytest.raises(UserError, match="the file is empty"):
        load(empty)
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as f:
        pickle.dump({"net": Payload()}, f)
    torch.save({"net": Payload()}, evil)
    with pytest.raises(UserError) as e:
        load(evil)
    assert "GLOBAL posix.system" in str(e.value) and "weights_only" not in str(e.value)
    assert "refused, not run" in str(e.value)


def test_a_diverging_loss_stops_like_a_nan_without_per_step_syncs():
    guard = NonFiniteGuard(torch.device("cpu"), divergence_factor=100.0)
    for loss in (2.0, 1.8, 1.6, 1.5, 1.5, 30.0, 1.4):  # learning, with a spike: fine
        guard.observe(torch.tensor(loss))
    guard.check(35, "")
    for _ in range(60):
        guard.observe(torch.tensor(1e6))  # finite, and far past 100x the start
    with pytest.raises(NonFiniteLossError, match=r"diverged \(its moving average .* grew past 100x its lowest, 1\.\d+"):
        guard.check(95, "")
    off = NonFiniteGuard(torch.device("cpu"), divergence_factor=None)
    for _ in range(50):
        off.observe(torch.tensor(1e6))
    off.check(50, "")


def test_the_advice_after_a_divergence_is_a_command_that_works(workdir):
    """The advice names a new run from the last good weights and data state at a lower rate; run it as printed."""
    args = ["task=captcha", *TINY_CAPTCHA, "optim.lr=2e-3"]
    cli(workdir, *args)
    run = latest_run(workdir)
    register_resolvers()
    with initialize_config_module(config_module=CONF_PACKAGE, version_base="1.3"):
        cfg = compose("config", overrides=args)
    advice = _restart_advice(NonFiniteLossError("x", last_good=str(run / "checkpoints" / "last.pt")), cfg, args)
    assert "optim.lr=0.0002" in advice and f"init.checkpoint={run}/checkpoints/last.pt" in advice
    command = shlex.split(advice.split("start a new run: ", 1)[1])
    assert command[:3] == ["python", "-m", "trainer"]
    proc = cli(workdir, *command[3:])
    assert "[train] initialised" in proc.stderr and "from " + str(run) in proc.stderr


def test_adam_at_1e8_stops_with_one_line(workdir):
    proc = cli(workdir, "task=captcha", *TINY_CAPTCHA, "optim.lr=1e8", "trainer.max_epochs=8", check=False)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-2000:]
    assert "diverged" in errors[0] or "NaN/inf" in errors[0]
