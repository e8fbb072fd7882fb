"""A checkpoint or a run folder never runs code: the payloads that used to run are refused in one line, and what they
aimed at is untouched. Run in process (eval's checkpoint path, and the CLI's resume replay)."""
from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf, open_dict

from trainer.checks import validate
from trainer.cli import register_resolvers
from trainer.errors import UserError
from trainer.invocation import CONF_PACKAGE
from trainer.resume import resume_overrides
from trainer.run import run
from trainer.trust import target_refusal

MODEL = {"_target_": "trainer.models.captcha_cnn.CaptchaCNN", "num_classes": 36, "length": 4, "in_channels": 1,
         "height": 24, "width": 64, "blocks": 2}


class Payload:
    """What a pickle can make torch.load(weights_only=False) run."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (Path.write_text, (Path(self.path), "pwned"))


def eval_config(tmp_path: Path, ckpt: Path):
    register_resolvers()
    with initialize_config_module(config_module=CONF_PACKAGE, version_base="1.3"):
        cfg = compose("config", overrides=["task=captcha", "mode=eval", f"ckpt={ckpt}", "dataset.width=64",
                                           "dataset.height=24", "dataset.test_size=8", "dataset.render_workers=1",
                                           f"paths.data_dir={tmp_path / 'data'}"])
    with open_dict(cfg):
        cfg.task_name = "captcha"
    return cfg


def forged_checkpoint(tmp_path: Path, model: dict) -> Path:
    path = tmp_path / "best.pt"
    config = {"task_name": "captcha", "model": model, "dataset": {"_target_": "trainer.datasets.captcha.CaptchaData"}}
    torch.save({"net": {}, "data": {}, "config": yaml.safe_dump(config)}, path)
    return path


@pytest.mark.parametrize("payload", [
    lambda victim, tmp: {"_target_": "builtins.open", "_args_": [str(victim), "w"]},
    lambda victim, tmp: {"_target_": "torch.load", "f": str(tmp / "evil.pkl"), "weights_only": False},
    # nested in a normal-looking model config: instantiate would build the child before the parent failed
    lambda victim, tmp: {**MODEL, "extra": {"_target_": "builtins.open", "_args_": [str(victim), "w"]}},
    # a project path that reaches torch.load through a module's imports
    lambda victim, tmp: {**MODEL, "extra": [{"_target_": "trainer.models.captcha_cnn.torch.load",
                                             "f": str(tmp / "evil.pkl"), "weights_only": False}]},
])
def test_a_checkpoint_config_that_would_run_code_is_refused(tmp_path, payload):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    with open(tmp_path / "evil.pkl", "wb") as f:
        pickle.dump(Payload(str(victim)), f)
    ckpt = forged_checkpoint(tmp_path, payload(victim, tmp_path))
    out = tmp_path / "eval"
    out.mkdir()
    with pytest.raises(UserError, match=r"^refused ckpt=.*_target_=.* configs read from files are data"):
        run(eval_config(tmp_path, ckpt), out)
    assert victim.read_text() == "precious"


def test_an_interpolation_in_a_checkpoint_config_is_refused(tmp_path):
    ckpt = forged_checkpoint(tmp_path, {**MODEL, "width": "${oc.env:HOME}"})
    (tmp_path / "eval").mkdir()
    with pytest.raises(UserError, match="is an interpolation"):
        run(eval_config(tmp_path, ckpt), tmp_path / "eval")


def test_the_allowlist_is_where_an_object_is_defined_not_how_it_is_spelled():
    assert target_refusal("trainer.models.captcha_cnn.CaptchaCNN") is None
    assert target_refusal("torch.optim.AdamW") is None and target_refusal("torchvision.models.resnet18") is None
    assert "outside the allowed modules" in target_refusal("trainer.models.captcha_cnn.torch.load")
    assert "outside the modules" in target_refusal("os.system")
    assert "not a class or function" in target_refusal("trainer.models.captcha_cnn")


def run_folder(tmp_path: Path, overrides: list[str]) -> Path:
    run_dir = tmp_path / "sent_to_you"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    return run_dir


@pytest.mark.parametrize("override, words", [
    ("+model.extra={_target_: builtins.exec, _args_: ['import os']}", "outside the modules"),
    ("+hydra.callbacks.x={_target_: os.system, _args_: ['true']}", "outside the modules"),
    ("hydra.job_logging.handlers.console.class=os.system", "configures logging or the config search path"),
    ("hydra.searchpath=[file:///tmp]", "configures logging or the config search path"),
])
def test_a_replayed_run_folder_cannot_name_code(tmp_path, monkeypatch, override, words):
    monkeypatch.chdir(tmp_path)
    run_dir = run_folder(tmp_path, ["task=captcha", override])
    register_resolvers()
    with pytest.raises(UserError, match=words):
        overrides, source = resume_overrides([f"resume={run_dir}"], "stamp")
        validate(overrides, multirun=False, untrusted=f"resume={source}")


def test_a_plain_run_folder_replays(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_dir = run_folder(tmp_path, ["task=captcha", "optim.lr=0.01", "model=captcha_cnn"])
    register_resolvers()
    overrides, source = resume_overrides([f"resume={run_dir}"], "stamp")
    validate(overrides, multirun=False, untrusted=f"resume={source}")
    assert overrides[:3] == ["task=captcha", "optim.lr=0.01", "model=captcha_cnn"] and source == run_dir
