"""The exponential moving average of the weights: the recursion, the swap, and what fit() validates, saves, resumes."""
from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from conftest import TINY_CAPTCHA, cli, latest_run
from test_fit import toy_stage
from trainer.config import trainer_config
from trainer.ema import WeightEMA
from trainer.errors import UserError
from trainer.inference import score
from trainer.loop import train_stage as fit
from trainer.stages import TaskNet
from trainer.state import Counters


class HeadWithSetting(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("alpha", torch.tensor(0.5))  # a setting chosen on validation, not a weight


def test_average_follows_the_warmed_up_recursion_and_the_swap_restores_the_live_weights():
    torch.manual_seed(0)
    net = TaskNet(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)), HeadWithSetting())
    net.model[0].bias.requires_grad_(False)  # frozen: not averaged
    ema = WeightEMA(net, decay=0.9)
    weight, mean = net.model[0].weight, net.model[1].running_mean
    expected_w, expected_m = weight.detach().clone(), mean.clone()
    for n in range(1, 6):
        with torch.no_grad():
            weight.add_(torch.randn_like(weight))
            mean.add_(1.0)
        ema.update()
        d = min(0.9, (1 + n) / (10 + n))
        expected_w = d * expected_w + (1 - d) * weight.detach()
        expected_m = d * expected_m + (1 - d) * mean
    assert len(ema.shadow) == 5  # linear weight (its bias is frozen), bn weight and bias, running mean and var
    live_w, live_m = weight.detach().clone(), mean.clone()
    with ema.swapped_in():
        torch.testing.assert_close(weight.detach(), expected_w)
        torch.testing.assert_close(mean, expected_m)
        with torch.no_grad():
            net.head.alpha.fill_(0.9)  # set during validation: must survive the swap back
    assert torch.equal(weight.detach(), live_w) and torch.equal(mean, live_m)
    assert net.head.alpha.item() == pytest.approx(0.9)

    other = WeightEMA(net, decay=0.9)
    other.load_state_dict(ema.state_dict())
    assert other.updates == 5 and all(torch.equal(a, b) for a, b in zip(other.shadow, ema.shadow))
    net.model[0].bias.requires_grad_(True)  # resumed with other trainable weights: a one-line error, not a mix-up
    with pytest.raises(UserError, match=r"does not fit this stage's trainable weights \(differing: model.0.bias\)"):
        WeightEMA(net, decay=0.9).load_state_dict(ema.state_dict())


def test_fit_validates_and_saves_the_average_and_trains_on_the_live_weights(tmp_path):
    stage = toy_stage(tmp_path, max_epochs=1, ema_decay=0.9)
    fit(stage, torch.device("cpu"), None, Counters())
    last = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    best = torch.load(tmp_path / "checkpoints" / "best.pt", weights_only=True)
    assert last["ema"]["updates"] == 4  # 64 samples, batches of 16
    live = stage.net.state_dict()
    assert all(torch.equal(live[k], v) for k, v in last["net"].items())  # the net trains on, and ends with, its own
    averaged = WeightEMA(stage.net, 0.9)
    averaged.load_state_dict(last["ema"])
    with averaged.swapped_in():
        for k, v in stage.net.state_dict().items():  # best.pt (one validation, at the end) holds the average
            torch.testing.assert_close(best["net"][k], v, msg=k)
        scores = score(stage.net, stage.data.loader("val"), torch.device("cpu"), "fp32", split="val")
    assert best["best"] == scores["acc"]  # what was validated is the average
    w = "model.4.weight"
    assert not torch.equal(best["net"][w], last["net"][w])


@pytest.mark.parametrize("stop_at", [4, 6])  # the end of epoch 1; the middle of epoch 2 (4 steps an epoch)
def test_resumed_average_continues_exactly(tmp_path, stop_at):
    whole = toy_stage(tmp_path / "whole", max_epochs=2, ema_decay=0.8)
    fit(whole, torch.device("cpu"), None, Counters())
    first = toy_stage(tmp_path / "part", max_epochs=2, max_steps=stop_at, ema_decay=0.8)
    fit(first, torch.device("cpu"), None, Counters())
    resume = torch.load(tmp_path / "part" / "checkpoints" / "last.pt", weights_only=False)
    rest = toy_stage(tmp_path / "part", max_epochs=2, ema_decay=0.8)
    fit(rest, torch.device("cpu"), resume, Counters(**resume["counters"]))
    a = torch.load(tmp_path / "whole" / "checkpoints" / "last.pt", weights_only=True)["ema"]
    b = torch.load(tmp_path / "part" / "checkpoints" / "last.pt", weights_only=True)["ema"]
    assert a["updates"] == b["updates"] == 8
    assert list(a["shadow"]) == list(b["shadow"])
    for name in a["shadow"]:
        torch.testing.assert_close(a["shadow"][name], b["shadow"][name], msg=name)


def test_decay_outside_zero_one_is_a_config_error():
    with pytest.raises(UserError, match=r"trainer.ema_decay.*not in \(0, 1\)"):
        trainer_config(OmegaConf.create({"ema_decay": 1.5}))


def test_eval_of_a_run_directory_scores_the_weights_its_test_score_came_from(workdir):
    cli(workdir, "task=captcha", *TINY_CAPTCHA, "trainer.ema_decay=0.9")
    run = latest_run(workdir)
    reported = json.loads((run / "results.json").read_text())["test"]
    cli(workdir, "task=captcha", *TINY_CAPTCHA, "mode=eval", f"ckpt={run}", "split=test")
    scored = json.loads((latest_run(workdir, "captcha/eval") / "results.json").read_text())["test"]
    assert scored["test/loss"] == pytest.approx(reported["test/loss"])  # best.pt (the average), not last.pt's weights


def test_a_buffer_its_module_marks_as_a_decision_is_not_averaged():
    class Decides(nn.Module):
        ema_skip = ("bias",)

        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(2, 2)
            self.register_buffer("bias", torch.tensor(0.0))  # chosen on validation, like a span classifier's
            self.register_buffer("running", torch.tensor(0.0))  # a running statistic: averaged

    net = TaskNet(nn.Sequential(Decides()), HeadWithSetting())
    ema = WeightEMA(net, 0.9)
    assert "model.0.running" in ema.names and "model.0.bias" not in ema.names
    net.model[0].bias.fill_(2.0)
    ema.update()
    with ema.swapped_in():
        assert float(net.model[0].bias) == 2.0
