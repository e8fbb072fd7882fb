"""In-process tests of trainer.loop.fit on a toy problem: frozen batch norm, accumulation, budgets, early stopping."""
from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from trainer.datasets.base import ArrayDataset, DataModule
from trainer.models.heads.multi_position import MultiPositionHead
from trainer import loop
from trainer.config import TrainerConfig
from trainer.errors import UserError
from trainer.loggers import CSVLogger
from trainer.loop import train_stage as fit
from trainer.stages import Stage, TaskNet, apply_freeze
from trainer.state import Counters
from trainer.schedules import warmup_cosine


class ToyData(DataModule):
    """64 random 4x4 images; the label says whether their mean is positive."""

    def setup(self) -> None:
        rng = np.random.default_rng(0)
        x = rng.standard_normal((64, 1, 4, 4)).astype(np.float32)
        y = (x.mean(axis=(1, 2, 3)) > 0).astype(np.int64)[:, None]
        self.splits = {"train": ArrayDataset({"x": x, "y": y}), "val": ArrayDataset({"x": x[:16], "y": y[:16]})}


def toy_stage(tmp_path, *, bn: bool = True, frozen=None, batch_size: int = 16, lr: float = 0.1, **trainer) -> Stage:
    torch.manual_seed(0)
    layers = [nn.Conv2d(1, 4, 3)] + ([nn.BatchNorm2d(4)] if bn else []) + [nn.ReLU(), nn.Flatten(), nn.Linear(16, 2),
                                                                           nn.Unflatten(1, (1, 2))]
    net = TaskNet(nn.Sequential(*layers), MultiPositionHead(length=1, alphabet="ab"))
    data = ToyData(batch_size=batch_size)
    data.setup()
    tcfg = TrainerConfig(**{"max_epochs": 2, "progress": False, "log_every_n_steps": 1, **trainer})
    return Stage(name="train", index=0, cfg=OmegaConf.create({}), config_yaml="", tcfg=tcfg, data=data, net=net,
                 optimizer_factory=functools.partial(torch.optim.SGD, lr=lr), scheduler_factory=None,
                 run_dir=tmp_path, best_path=tmp_path / "checkpoints" / "best.pt",
                 bn_frozen=apply_freeze(net, None, frozen))


def test_frozen_batchnorm_statistics_survive_validation(tmp_path):
    stage = toy_stage(tmp_path, frozen=[r"^model\.[01]\."], max_epochs=3)
    bn = stage.net.model[1]
    before = bn.running_mean.clone()
    fit(stage, torch.device("cpu"), None, Counters())
    assert torch.equal(bn.running_mean, before)  # three epochs, two validations in between
    trained = stage.net.model[4].weight
    assert trained.requires_grad and not stage.net.model[0].weight.requires_grad


def test_gradient_accumulation_equals_the_large_batch(tmp_path):
    big = toy_stage(tmp_path / "a", bn=False, batch_size=32, max_epochs=1)
    fit(big, torch.device("cpu"), None, Counters())
    small = toy_stage(tmp_path / "b", bn=False, batch_size=16, max_epochs=1, accumulate_grad_batches=2)
    small.data.plan = lambda split, train: _pairs_of(big.data.plan(split, train))  # same samples, split in two
    result = fit(small, torch.device("cpu"), None, Counters())
    assert result.counters.step == 2
    for a, b in zip(big.net.parameters(), small.net.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def _pairs_of(plan):
    class Halves:
        def batches(self, epoch):
            return [half for b in plan.batches(epoch) for half in (b[: len(b) // 2], b[len(b) // 2 :])]

    return Halves()


def test_max_steps_and_max_time_stop_the_stage(tmp_path):
    result = fit(toy_stage(tmp_path / "a", max_epochs=50, max_steps=5), torch.device("cpu"), None, Counters())
    assert result.counters.step == 5 and result.stop_reason == "max_steps=5"
    result = fit(toy_stage(tmp_path / "b", max_epochs=10_000, max_time="0.5"), torch.device("cpu"), None, Counters())
    assert result.stop_reason == "max_time=0.5" and result.counters.epoch < 10_000


class FakeClock:
    """Stands in for the loop's `time`: each reading of the clock advances it by `tick` seconds, so a time budget
    ends after a fixed number of readings, on any machine."""

    def __init__(self, tick: float):
        self.now, self.tick = 0.0, tick

    def monotonic(self) -> float:
        self.now += self.tick
        return self.now


def logged_lrs(stage: Stage, monkeypatch, stop: str | None = "max_time=3") -> list[float]:
    monkeypatch.setattr(loop, "time", FakeClock(0.01))
    stage.loggers = [CSVLogger(stage.run_dir)]  # keeps its rows in memory too
    stage.scheduler_factory = functools.partial(warmup_cosine, warmup=0.0)
    result = fit(stage, torch.device("cpu"), None, Counters())
    assert result.stop_reason == stop
    return [row["lr"] for row in stage.loggers[0].rows if "lr" in row]


def test_schedule_to_max_time_changes_nothing_when_the_steps_fit_in_the_time(tmp_path, monkeypatch):
    plain = logged_lrs(toy_stage(tmp_path / "a", max_epochs=20, max_time="100"), monkeypatch, stop="max_epochs=20")
    fitted = logged_lrs(toy_stage(tmp_path / "b", max_epochs=20, max_time="100", schedule_to_max_time=True),
                        monkeypatch, stop="max_epochs=20")
    assert len(plain) == 80 and fitted == plain
    assert plain[0] == 0.1 and plain[-1] < 1e-3  # step 1 used the peak (warmup=0), step 80 the end of the decay


def test_schedule_to_max_time_runs_the_whole_decay_in_the_time(tmp_path, monkeypatch):
    """10,000 epochs planned, 3 s allowed: fitted to the time, the cosine runs its whole course over the steps that
    fit (the clock is read about equally often at every step, so time and steps advance together)."""
    lrs = logged_lrs(toy_stage(tmp_path, max_epochs=10_000, max_time="3", schedule_to_max_time=True), monkeypatch)
    n = len(lrs)
    assert n > 50
    planned = [0.05 * (1 + math.cos(math.pi * k / n)) for k in range(n)]  # the rate each logged step used
    assert max(abs(a - b) for a, b in zip(lrs, planned)) < 0.005 and lrs[-1] < 1e-3


def test_rank_0s_clock_decides_both_the_stop_and_the_schedule(tmp_path, monkeypatch):
    """Under torchrun every rank must stop, and set its lr, by rank 0's time (distributed.rank0_value). Here "rank 0"
    counts twice our time: the run must stop at about half the steps, its cosine complete over them."""
    ours = logged_lrs(toy_stage(tmp_path / "a", max_epochs=10_000, max_time="3", schedule_to_max_time=True),
                      monkeypatch)
    monkeypatch.setattr(loop.dist, "rank0_value", lambda seconds: 2 * seconds)
    theirs = logged_lrs(toy_stage(tmp_path / "b", max_epochs=10_000, max_time="3", schedule_to_max_time=True),
                        monkeypatch)
    assert abs(len(theirs) - len(ours) / 2) <= 2 and theirs[-1] < 1e-3
    assert theirs[len(theirs) // 2] == pytest.approx(0.05, abs=0.005)  # halfway down the cosine at half the steps


def test_without_schedule_to_max_time_the_time_budget_cuts_the_schedule_short(tmp_path, monkeypatch):
    lrs = logged_lrs(toy_stage(tmp_path, max_epochs=10_000, max_time="3"), monkeypatch)
    total = 10_000 * 4  # 64 samples in batches of 16
    assert lrs[-1] == pytest.approx(0.05 * (1 + math.cos(math.pi * len(lrs) / total))) and lrs[-1] > 0.099


def test_schedule_to_max_time_refuses_a_recursive_schedule(tmp_path):
    stage = toy_stage(tmp_path, max_time="1", schedule_to_max_time=True)
    stage.scheduler_factory = lambda opt, total_steps: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)
    with pytest.raises(UserError, match="CosineAnnealingLR cannot do"):
        fit(stage, torch.device("cpu"), None, Counters())


def test_early_stopping_and_best_checkpoint(tmp_path):
    stage = toy_stage(tmp_path, bn=False, lr=0.0, max_epochs=20, early_stopping_patience=2)  # never improves
    result = fit(stage, torch.device("cpu"), None, Counters())
    assert result.stop_reason == "early stopping" and result.counters.epoch == 3
    best = torch.load(tmp_path / "checkpoints" / "best.pt", weights_only=True)
    assert best["epoch"] == 1 and best["monitor"] == "val/acc"


def test_also_evaluate_logs_extra_splits(tmp_path):
    from trainer.loggers import CSVLogger

    stage = toy_stage(tmp_path, max_epochs=1, also_evaluate=["train"])
    stage.loggers = [CSVLogger(tmp_path)]
    fit(stage, torch.device("cpu"), None, Counters())
    rows = stage.loggers[0].rows
    assert any("train/acc" in r and "val/acc" in r for r in rows)
    with pytest.raises(Exception, match="split 'nope' does not exist"):
        fit(toy_stage(tmp_path / "x", also_evaluate=["nope"]), torch.device("cpu"), None, Counters())


def test_without_a_validation_split_the_final_weights_are_best(tmp_path, caplog):
    stage = toy_stage(tmp_path, max_epochs=2)
    del stage.data.splits["val"]
    with caplog.at_level("INFO", logger="trainer"):
        result = fit(stage, torch.device("cpu"), None, Counters())
    assert result.best is None and "no validation split: best.pt holds the final weights" in caplog.text
    best = torch.load(stage.best_path, weights_only=True)["net"]
    for key, value in stage.net.state_dict().items():
        assert torch.equal(best[key], value), key


def test_a_resumed_stage_must_keep_its_planned_steps(tmp_path):
    """The lr schedule is laid out over total_steps: resuming into a plan of another length (more epochs, other data) is
    refused before training instead of failing at OneCycle's last step or stretching the schedule unnoticed."""
    stage = toy_stage(tmp_path, max_epochs=2)
    result = fit(stage, torch.device("cpu"), None, Counters())
    assert result.counters.total_steps == 8 and result.stop_reason == "max_epochs=2"  # 64 / 16 x 2
    longer = toy_stage(tmp_path, max_epochs=3)
    longer.scheduler_factory = functools.partial(warmup_cosine, warmup=0.0)
    longer.config_path, longer.config_yaml = tmp_path / "config.yaml", "max_epochs: 3\n"
    with pytest.raises(UserError, match="planned for 8 steps and its config now gives 12"):
        fit(longer, torch.device("cpu"), None, Counters(total_steps=8))
    assert not longer.config_path.exists()  # the refused resume did not rewrite the run's config
    fit(toy_stage(tmp_path, max_epochs=3), torch.device("cpu"), None, Counters(total_steps=8))  # no schedule: fine


def test_an_interrupt_on_the_last_step_ends_the_stage_as_planned(tmp_path):
    """Saved mid-stage at step == max_steps, a resume would train past the budget (or past OneCycle's end)."""
    from trainer.callbacks import GracefulInterrupt

    interrupt = GracefulInterrupt(enabled=False)
    interrupt.requested = True  # as if Ctrl-C came during the first step
    result = fit(toy_stage(tmp_path / "a", max_steps=1), torch.device("cpu"), None, Counters(), interrupt)
    assert result.stop_reason == "max_steps=1" and result.counters.stage_done
    with pytest.raises(KeyboardInterrupt):  # not the last step: last.pt at this step, then stop
        fit(toy_stage(tmp_path / "b", max_steps=2), torch.device("cpu"), None, Counters(), interrupt)
    saved = torch.load(tmp_path / "b" / "checkpoints" / "last.pt", weights_only=True)["counters"]
    assert saved["step"] == 1 and not saved["stage_done"]
