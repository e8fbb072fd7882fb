"""Unit tests of the loop's pieces: config validation, batch plans, checkpoints, trackers, schedules."""
from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from trainer.datasets.base import (ArrayDataset, EpochBatchSampler, RandomBatches, SequentialBatches, per_sample_uniform,
                           resolve_limit)
from trainer import checkpoint as ckpt
from trainer.callbacks import MonitorTracker, NonFiniteGuard
from trainer.config import parse_duration, trainer_config
from trainer.errors import NonFiniteLossError, UserError
from trainer.stages import apply_freeze, stage_configs
from trainer.state import Counters, param_groups
from trainer.resume import ResumePoint
from trainer.schedules import one_cycle, seek, step_decay, warmup_cosine


# ---- config ------------------------------------------------------------------------------------------------------
def test_trainer_config_accepts_defaults_and_overrides():
    cfg = trainer_config(OmegaConf.create({"max_epochs": 3, "precision": "bf16", "max_time": "00:01:30"}))
    assert cfg.max_epochs == 3 and cfg.precision == "bf16" and cfg.device == "auto"


@pytest.mark.parametrize("node, words", [
    ({"max_epoch": 3}, "unknown key 'trainer.max_epoch'"),
    ({"max_epochs": "ten"}, "bad value for 'trainer.max_epochs'"),
    ({"precision": "fp64"}, "'fp64' is not one of fp32, bf16, fp16"),
    ({"device": "gpu"}, "trainer.device"),
    ({"accumulate_grad_batches": 0}, "accumulate_grad_batches"),
    ({"max_time": "soon"}, "is not seconds or [DD:]HH:MM:SS"),
    ({"limit_train_batches": -1}, "limit_train_batches"),
    ({"max_time": "nan"}, "must be a finite number of seconds > 0"),
])
def test_trainer_config_rejects_bad_input_in_one_line(node, words):
    with pytest.raises(UserError) as e:
        trainer_config(OmegaConf.create(node))
    assert words in str(e.value) and "\n" not in str(e.value)


def test_parse_duration():
    assert parse_duration("90") == 90
    assert parse_duration("00:30:00") == 1800
    assert parse_duration("1:00:00:01") == 86401


# ---- batch plans -------------------------------------------------------------------------------------------------
def test_random_batches_depend_only_on_seed_and_epoch():
    plan = RandomBatches(10, 3, seed=1, drop_last=True)
    assert plan.batches(0) == RandomBatches(10, 3, seed=1, drop_last=True).batches(0)
    assert plan.batches(0) != plan.batches(1)
    assert all(len(b) == 3 for b in plan.batches(0)) and len(plan.batches(0)) == 3
    assert sorted(i for b in RandomBatches(10, 3, drop_last=False).batches(4) for i in b) == list(range(10))


def test_epoch_sampler_slices_global_batches_across_ranks_and_resumes():
    plan = SequentialBatches(8, 4)
    ranks = [list(EpochBatchSampler(plan, rank=r, world_size=2)) for r in range(2)]
    assert ranks[0] == [[0, 2], [4, 6]] and ranks[1] == [[1, 3], [5, 7]]
    sampler = EpochBatchSampler(plan)
    sampler.set_start(1)
    assert list(sampler) == [[4, 5, 6, 7]] and len(sampler) == 1
    limited = EpochBatchSampler(SequentialBatches(100, 10), limit=3)
    assert len(limited) == 3


def test_training_under_ddp_skips_batches_too_small_to_give_every_rank_a_sample():
    plan = SequentialBatches(9, 4)  # the last global batch holds one sample: rank 1 would have nothing
    ranks = [list(EpochBatchSampler(plan, rank=r, world_size=2, min_size=2)) for r in range(2)]
    assert ranks[0] == [[0, 2], [4, 6]] and ranks[1] == [[1, 3], [5, 7]]
    assert list(EpochBatchSampler(plan, rank=1, world_size=2))[-1] == []  # evaluation keeps it (and copes)


def test_fresh_sequential_batches_move_on_each_epoch():
    plan = SequentialBatches(4, 2, fresh_each_epoch=True)
    assert plan.batches(0) == [[0, 1], [2, 3]] and plan.batches(2) == [[8, 9], [10, 11]]


def test_resolve_limit_follows_lightning():
    assert resolve_limit(None, 10) is None
    assert resolve_limit(0.25, 10) == 2
    assert resolve_limit(1.0, 10) == 10
    assert resolve_limit(3, 10) == 3 and resolve_limit(30, 10) == 10


def test_per_sample_uniform_is_a_function_of_seed_epoch_index():
    a = per_sample_uniform(0, 1, np.array([5, 6, 7]), 2)
    b = per_sample_uniform(0, 1, np.array([7, 5]), 2)
    assert np.array_equal(a[[2, 0]], b)
    assert not np.array_equal(a, per_sample_uniform(0, 2, np.array([5, 6, 7]), 2))
    big = per_sample_uniform(3, 0, np.arange(20000), 1)
    assert 0 <= big.min() and big.max() < 1 and abs(big.mean() - 0.5) < 0.01


def test_array_dataset_fetches_batches_in_the_requested_order():
    ds = ArrayDataset({"x": np.arange(10) * 10, "y": np.arange(10)})
    batch = ds.__getitems__([7, 2, 9])
    assert batch["x"].tolist() == [70, 20, 90] and batch["y"].tolist() == [7, 2, 9]


# ---- checkpoints -------------------------------------------------------------------------------------------------
def test_atomic_save_and_weights_only_load(tmp_path):
    state = {"w": torch.arange(3.0), "rng": ckpt.rng_state(), "n": 3, "s": "x"}
    ckpt.save_atomic(state, tmp_path / "c.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary file left behind
    back = ckpt.load(tmp_path / "c.pt")
    assert torch.equal(back["w"], state["w"]) and back["n"] == 3


def test_rng_state_round_trip_restores_every_generator():
    import random

    saved = ckpt.rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    ckpt.set_rng_state(saved)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_corrupt_checkpoint_is_a_user_error(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read checkpoint"):
        ckpt.load(bad)
    with pytest.raises(UserError, match="checkpoint not found"):
        ckpt.load(tmp_path / "missing.pt")


def test_filter_state_and_partial_load_seed_an_encoder():
    lm = nn.ModuleDict({"encoder": nn.Linear(2, 2), "decoder": nn.Linear(2, 5)})
    clf = nn.ModuleDict({"encoder": nn.Linear(2, 2), "out": nn.Linear(2, 1)})
    state = ckpt.filter_state(lm.state_dict(), include=[r"^encoder\."])
    assert set(state) == {"encoder.weight", "encoder.bias"}
    loaded = ckpt.load_partial(clf, state, "test")
    assert sorted(loaded) == ["encoder.bias", "encoder.weight"]
    assert torch.equal(clf["encoder"].weight, lm["encoder"].weight)
    renamed = ckpt.filter_state({"lm.w": torch.ones(1)}, rename={r"^lm\.": "encoder."})
    assert list(renamed) == ["encoder.w"]
    with pytest.raises(UserError, match="shape"):
        ckpt.load_partial(clf, {"out.weight": torch.ones(3, 3)}, "test")


# ---- trackers ----------------------------------------------------------------------------------------------------
def test_monitor_tracker_best_and_patience():
    t = MonitorTracker("val/acc", "max", patience=2)
    assert t.update({"val/acc": 0.5}) and not t.update({"val/acc": 0.4})
    assert not t.should_stop and not t.update({"val/acc": 0.5})
    assert t.should_stop and t.best == 0.5
    with pytest.raises(UserError, match="not among the logged metrics"):
        t.update({"val/loss": 1.0})


def test_non_finite_guard_raises_only_after_a_bad_loss():
    g = NonFiniteGuard(torch.device("cpu"))
    g.observe(torch.tensor(1.0))
    g.check(5, "last.pt")
    g.observe(torch.tensor(float("nan")))
    g.observe(torch.tensor(2.0))
    with pytest.raises(NonFiniteLossError, match="between steps 5 and 9") as e:
        g.check(9, "/no/such/last.pt")
    assert "no checkpoint had been written yet" in str(e.value) and "precision" not in str(e.value)  # fp32 already


def test_non_finite_guard_names_the_checkpoint_kept_and_fp32_only_when_not_in_use(tmp_path):
    (tmp_path / "last.pt").write_bytes(b"")
    g = NonFiniteGuard(torch.device("cpu"), precision="bf16")
    g.observe(torch.tensor(float("inf")))
    with pytest.raises(NonFiniteLossError, match=f"last good checkpoint: {tmp_path / 'last.pt'}.*precision=fp32"):
        g.check(3, str(tmp_path / "last.pt"))


# ---- parameters, stages, schedules -------------------------------------------------------------------------------
def test_freeze_patterns_and_frozen_batchnorm():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Linear(2, 2))
    frozen_bn = apply_freeze(net, trainable=[r"^2\."], frozen=None)
    assert [n for n, p in net.named_parameters() if p.requires_grad] == ["2.weight", "2.bias"]
    assert frozen_bn == [net[1]]
    with pytest.raises(UserError, match="no parameter is trainable"):
        apply_freeze(net, trainable=["nothing"], frozen=None)


def test_param_groups_skip_decay_on_biases_and_norms():
    net = nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3))
    groups = param_groups(net, 0.1)
    assert len(groups[0]["params"]) == 1 and len(groups[1]["params"]) == 3 and groups[1]["weight_decay"] == 0


def test_lr_scale_puts_the_matching_parameters_in_groups_of_their_own_at_a_multiple_of_the_rate():
    net = nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3))
    groups = param_groups(net, 0.1, {"^1[.]": 10.0}, lr=1e-3)
    assert [(len(g["params"]), g["weight_decay"], g.get("lr")) for g in groups] == [
        (1, 0.1, None), (1, 0.0, None), (2, 0.0, 1e-2)]  # the LayerNorm's two, undecayed, at 10x
    assert [g.get("lr") for g in param_groups(net, None, {"^0[.]": 2.0, "weight": 5.0}, lr=1.0)] == [None, 2.0, 5.0]
    with pytest.raises(UserError, match="matches no trainable parameter"):
        param_groups(net, None, {"^nothing": 2.0}, lr=1.0)
    with pytest.raises(UserError, match="lr_scale multiplies optim.lr"):
        param_groups(net, None, {"^0": 2.0}, lr=None)
    for bad, why in [({"(": 2.0}, "not a regular expression"), ({"^0": 0.0}, "must be > 0")]:
        with pytest.raises(UserError, match=why):
            trainer_config(OmegaConf.create({"lr_scale": bad}))


def test_stage_overrides_merge_or_replace_by_target():
    cfg = OmegaConf.create({
        "optim": {"_target_": "torch.optim.Adam", "lr": 1e-3, "betas": [0.9, 0.99]},
        "trainer": {"max_epochs": 10},
        "stages": {
            "a": {"trainer": {"max_epochs": 2}},
            "b": {"optim": {"_target_": "torch.optim.SGD", "lr": 1e-4}, "frozen": ["x"], "init": {"checkpoint": "previous"}},
        },
    })
    (na, a), (nb, b) = stage_configs(cfg)
    assert (na, nb) == ("a", "b")
    assert a.trainer.max_epochs == 2 and a.optim.betas == [0.9, 0.99]
    assert b.optim == {"_target_": "torch.optim.SGD", "lr": 1e-4}  # replaced, not merged: no Adam betas
    assert b.trainer.max_epochs == 10 and b.stage.frozen == ["x"] and "stages" not in b
    with pytest.raises(UserError, match="not a config section"):
        stage_configs(OmegaConf.create({"stages": {"a": {"optimm": {}}}}))


def _check_resumable(saved, stages, index, done):
    ResumePoint({"config": OmegaConf.to_yaml(saved)}, Counters(stage_index=index, stage_done=done)).check(stages)


def test_a_resume_may_drop_the_weights_file_it_started_from_but_not_change_the_model():
    """last.pt replaces the initial weights: model.weights_path=null (the file is not on the resuming machine) is no
    change; model.pretrained is, since torchvision builds another architecture for some weights."""
    saved = OmegaConf.create({"task_name": "dogs", "model": {"arch": "inception_v3", "weights_path": "/a/inc.pth",
                                                             "pretrained": False, "dropout": 0.2},
                              "trainer": {"max_epochs": 3}})
    now = saved.copy()
    now.model.weights_path = None
    _check_resumable(saved, [("train", now)], index=0, done=False)
    for key, value, was in (("dropout", 0.5, 0.2), ("pretrained", True, False)):
        changed = now.copy()
        changed.model[key] = value
        with pytest.raises(UserError, match=rf"the model config changed \(model.{key}: {was} -> {value}\)"):
            _check_resumable(saved, [("train", changed)], index=0, done=False)


def test_command_line_keys_win_over_a_stages_values():
    cfg = OmegaConf.create({
        "optim": {"_target_": "torch.optim.Adam", "lr": 1e-3, "betas": [0.9, 0.99]},
        "trainer": {"max_epochs": 1, "limit_train_batches": 5},
        "stages": {
            "a": {"trainer": {"max_epochs": 5}},
            "b": {"optim": {"_target_": "torch.optim.SGD", "lr": 1e-4}, "trainer": {"max_epochs": 20}},
        },
    })
    pinned = ["trainer.max_epochs", "optim.betas", "trainer.limit_train_batches"]
    (_, a), (_, b) = stage_configs(cfg, pinned)
    assert a.trainer.max_epochs == 1 and b.trainer.max_epochs == 1  # the command line's, not the stages' 5 and 20
    assert "betas" not in b.optim  # a key the stage's replaced section does not have is not forced into it
    assert b.optim.lr == 1e-4 and b.trainer.limit_train_batches == 5
    (_, a), (_, b) = stage_configs(cfg)
    assert (a.trainer.max_epochs, b.trainer.max_epochs) == (5, 20)
    # stages.b.trainer.max_epochs=20 given on the command line as well: for b, that one wins
    (_, a), (_, b) = stage_configs(cfg, [*pinned, "stages.b.trainer.max_epochs"])
    assert (a.trainer.max_epochs, b.trainer.max_epochs) == (1, 20)
    # optim.lr=0.5 on the command line: Adam's, in the stages that keep Adam; stage b builds SGD with its own rate
    cfg.optim.lr = 0.5
    (_, a), (_, b) = stage_configs(cfg, ["optim.lr"])
    assert (a.optim.lr, b.optim.lr) == (0.5, 1e-4)
    # a stage's section given as a dict on the command line pins its leaves, as one key at a time would
    from trainer.invocation import Invocation
    keys = Invocation(("trainer.max_epochs=1", "stages.b.trainer={max_epochs: 20, log_every_n_steps: 1}")).pinned_keys()
    assert sorted(keys) == ["stages.b.trainer.log_every_n_steps", "stages.b.trainer.max_epochs", "trainer.max_epochs"]
    (_, a), (_, b) = stage_configs(cfg, keys)
    assert (a.trainer.max_epochs, b.trainer.max_epochs) == (1, 20)


def test_schedules_shape():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    s = warmup_cosine(opt, total_steps=100, warmup=10)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        s.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0) and lrs[-1] < 0.01
    opt2 = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    s2 = step_decay(opt2, total_steps=10, milestones=(0.5,), gamma=0.1)
    for _ in range(5):
        opt2.step()
        s2.step()
    assert math.isclose(opt2.param_groups[0]["lr"], 0.1)
    opt3 = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=0.01)
    one_cycle(opt3, total_steps=20)
    assert opt3.param_groups[0]["lr"] < 0.01


@pytest.mark.parametrize("make", [
    functools.partial(one_cycle, total_steps=40),
    functools.partial(warmup_cosine, total_steps=40, warmup=5),
    functools.partial(step_decay, total_steps=40, milestones=(0.5,)),
])
def test_seek_lands_where_stepping_does(make):
    """schedule_to_max_time jumps the schedule to a step; the lr (and OneCycle's momentum) must be the stepped ones."""
    stepped = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.5, momentum=0.9)
    jumped = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.5, momentum=0.9)
    s, j = make(stepped), make(jumped)
    for target in (3, 4, 17, 30, 40):
        while s.last_epoch < target:
            stepped.step()
            s.step()
        jumped.step()
        seek(j, target)
        assert jumped.param_groups[0]["lr"] == pytest.approx(stepped.param_groups[0]["lr"], rel=1e-12)
        assert jumped.param_groups[0]["momentum"] == pytest.approx(stepped.param_groups[0]["momentum"], rel=1e-12)


def test_seek_refuses_a_recursive_schedule():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.5)
    with pytest.raises(TypeError, match="not a closed-form schedule"):
        seek(torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10), 3)


def test_a_limit_of_1_is_one_batch_and_1_0_the_whole_split():
    """Lightning's convention; the trainer config must not turn the int 1 into the float 1.0 on the way."""
    from trainer.datasets.base import resolve_limit
    from trainer.config import trainer_config

    one = trainer_config(OmegaConf.create({"limit_train_batches": 1, "limit_test_batches": 1.0}))
    assert resolve_limit(one.limit_train_batches, 10) == 1 and resolve_limit(one.limit_test_batches, 10) == 10


def test_one_cycle_of_four_steps():
    """torch's OneCycleLR divides by pct_start * total_steps - 1, zero for 4 steps at the default 0.25."""
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    s = one_cycle(opt, total_steps=4)
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        s.step()
    assert lrs[0] < lrs[1] and lrs[1] > lrs[2] > lrs[3] and max(lrs) <= 0.1


def test_a_failed_checkpoint_write_leaves_no_temporary_file(tmp_path):
    from trainer.checkpoint import save_atomic

    with pytest.raises(Exception):
        save_atomic({"f": lambda: 0}, tmp_path / "last.pt")  # cannot be pickled
    assert list(tmp_path.iterdir()) == []


def test_non_finite_guard_catches_weights_that_overflowed_while_the_loss_stayed_finite():
    g = NonFiniteGuard(torch.device("cpu"))
    g.observe(torch.tensor(1.0))
    g.check(2, "", {"bn.running_var": torch.ones(3), "bn.num_batches_tracked": torch.tensor(2)})
    with pytest.raises(NonFiniteLossError, match="weights .* became NaN/inf at step 4"):
        g.check(4, "", {"bn.running_var": torch.tensor([1.0, float("inf")])})


def test_every_bench_script_compiles():
    # bench/ runs outside the test suite (its measurements take minutes); a syntax error there would go unseen
    from pathlib import Path

    scripts = sorted((Path(__file__).parent.parent / "bench").glob("*.py"))
    assert scripts
    for script in scripts:
        compile(script.read_text(encoding="utf-8"), str(script), "exec")
