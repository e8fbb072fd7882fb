"""Stage options that hand data state and pseudo-labels on, and eval/predict of a staged task, run in process.

A toy text task: a character vocabulary built from the training text (most frequent first), sentences labelled by
whether they hold more 'a' than 'b'. Stage 1 trains; stage 2 reads other text, which alone would build another
vocabulary, and takes stage 1's through `init.data`.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf, open_dict
from torch import nn

from trainer.cli import register_resolvers
from trainer.datasets.base import ArrayDataset, DataModule
from trainer.errors import UserError
from trainer.invocation import CONF_PACKAGE
from trainer.models.heads.classification import ClassificationHead
from trainer.run import run

LENGTH = 12


def sentences(seed: int, n: int, letters: str) -> list[str]:
    rng = np.random.default_rng(seed)
    return ["".join(rng.choice(list(letters), size=LENGTH)) for _ in range(n)]


class ToyText(DataModule):
    """Sentences of `letters`; y = more 'a' than 'b'. The vocabulary and the pseudo-labels are its state."""

    calls: list[str] = []  # what happened, in order, for the tests to read

    def __init__(self, letters: str = "abc", seed: int = 0, fail_in_epoch: int = -1, **loader: Any):
        super().__init__(**loader)
        self.letters, self.text_seed, self.fail_in_epoch = letters, seed, fail_in_epoch
        self.chars: list[str] | None = None
        self.pseudo: dict[str, list[int]] = {"indices": [], "labels": []}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        ToyText.calls.append("load_state_dict")
        self.chars = list(state["chars"])
        self.pseudo = {k: list(v) for k, v in state.get("pseudo", self.pseudo).items()}

    def setup(self, stage: str = "fit") -> None:
        ToyText.calls.append(f"setup:{stage}")
        text = {"train": sentences(self.text_seed, 96, self.letters), "val": sentences(self.text_seed + 1, 32, self.letters),
                "unlabelled": sentences(self.text_seed + 2, 40, self.letters)}
        if self.chars is None:
            counts = Counter("".join(text["train"]))
            self.chars = sorted(counts, key=lambda c: (-counts[c], c))
        self.text = text
        self.splits = {name: self._encode(lines) for name, lines in text.items()}
        self._add_pseudo()

    def _encode(self, lines: list[str], labels: list[int] | None = None) -> ArrayDataset:
        ids = {c: i + 1 for i, c in enumerate(self.chars)}
        x = np.array([[ids.get(c, 0) for c in line] for line in lines], dtype=np.int64).reshape(-1, LENGTH)
        y = np.array(labels if labels is not None else [int(s.count("a") > s.count("b")) for s in lines],
                     dtype=np.int64)
        dataset = ArrayDataset({"x": x, "y": y})
        fail = self.fail_in_epoch

        def set_epoch(epoch: int) -> None:
            if epoch == fail:
                raise RuntimeError("the machine went away")
            dataset.epoch = epoch

        dataset.set_epoch = set_epoch
        return dataset

    def _add_pseudo(self) -> None:
        if self.pseudo["indices"]:
            train = self.text["train"] + [self.text["unlabelled"][i] for i in self.pseudo["indices"]]
            labels = [int(s.count("a") > s.count("b")) for s in self.text["train"]] + self.pseudo["labels"]
            self.splits["train"] = self._encode(train, labels)

    def set_pseudo_labels(self, split: str, indices: list[int], labels: list[Any]) -> None:
        ToyText.calls.append(f"pseudo:{len(indices)}")
        self.pseudo = {"indices": list(indices), "labels": [int(v) for v in labels]}
        self._add_pseudo()

    @property
    def info(self) -> dict[str, Any]:
        return {"vocab_size": len(self.chars) + 1}

    def state_dict(self) -> dict[str, Any]:
        return {"chars": list(self.chars), "pseudo": self.pseudo}

    reads_stdin = True

    def predict_dataset(self, source: str) -> ArrayDataset:
        return self._encode(Path(source).read_text().split())

    def write_predictions(self, dataset, predictions, out) -> None:
        for p in predictions:
            out.write(f"A:{p}\n")


class ToyTextB(ToyText):
    """The same data, another way of writing predictions: tells which stage's dataset config predict used."""

    def write_predictions(self, dataset, predictions, out) -> None:
        for p in predictions:
            out.write(f"B:{p}\n")


class BagOfChars(nn.Module):
    def __init__(self, vocab_size: int, dim: int = 16):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, dim)
        self.out = nn.Linear(dim, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.embedding(x).mean(1))


class CountingHead(ClassificationHead):
    labelled = 0

    def pseudo_label(self, outputs, batch):
        CountingHead.labelled += len(batch["x"])
        return super().pseudo_label(outputs, batch)


def toy_config(tmp_path: Path, stages: dict | None = None, **root: Any):
    register_resolvers()
    with initialize_config_module(config_module=CONF_PACKAGE, version_base="1.3"):
        cfg = compose("config", overrides=["task=captcha", "sched=none", "optim=adam", "trainer.max_epochs=2",
                                           "trainer.progress=false", "trainer.log_every_n_steps=2",
                                           "trainer.also_evaluate=[]", "trainer.test_model=null"])
    here = __name__
    with open_dict(cfg):
        cfg.task_name = "toy"
        cfg.dataset = {"_target_": f"{here}.ToyText", "batch_size": 16}
        cfg.model = {"_target_": f"{here}.BagOfChars", "vocab_size": "${data_info.vocab_size}"}
        cfg.head = {"_target_": f"{here}.CountingHead", "num_classes": 2}
        cfg.stages = stages
        cfg.paths.output_dir = str(tmp_path)
        for key, value in root.items():
            OmegaConf.update(cfg, key, value, force_add=True)
    return cfg


STAGES = {
    "first": {},
    "second": {"init": {"checkpoint": "previous", "data": "previous"},
               "dataset": {"_target_": f"{__name__}.ToyTextB", "letters": "cbad", "seed": 7, "batch_size": 16},
               "pseudo_label": {"split": "unlabelled", "threshold": 0.0, "max_items": 25},
               "frozen": ["embedding"]},
}


def test_init_data_carries_the_vocabulary_and_pseudo_labels_join_the_training_split(tmp_path):
    ToyText.calls.clear()
    CountingHead.labelled = 0
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    result = run(toy_config(tmp_path, STAGES), run_dir)
    assert result["status"] == "ok" and "test" not in result  # (no test split)
    first = torch.load(run_dir / "checkpoints" / "best-first.pt", weights_only=True)["data"]
    second = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)["data"]
    own = Counter("".join(sentences(7, 96, "cbad")))
    assert sorted(own, key=lambda c: (-own[c], c)) != first["chars"]  # stage 2's text alone: another vocabulary
    assert second["chars"] == first["chars"]  # ... but it kept stage 1's ids, including 'd' as unknown
    # the DataModule got its state before setup, and the pseudo-labels after it
    assert ToyText.calls == ["setup:fit", "load_state_dict", "setup:fit", "pseudo:25"]
    assert CountingHead.labelled == 40 and len(second["pseudo"]["indices"]) == 25


def test_a_resumed_self_training_stage_reloads_its_pseudo_labels(tmp_path):
    ToyText.calls.clear()
    CountingHead.labelled = 0
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    crashing = {**STAGES, "second": {**STAGES["second"], "dataset": {**STAGES["second"]["dataset"],
                                                                      "fail_in_epoch": 1}}}
    with pytest.raises(RuntimeError, match="went away"):
        run(toy_config(tmp_path, crashing), run_dir)  # stage 2 dies after its first epoch (last.pt written)
    labelled = CountingHead.labelled
    saved = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert saved["counters"]["stage_index"] == 1 and len(saved["data"]["pseudo"]["indices"]) == 25

    ToyText.calls.clear()
    result = run(toy_config(tmp_path, STAGES, resume=str(run_dir)), run_dir)
    assert result["status"] == "ok" and CountingHead.labelled == labelled  # not labelled again
    assert ToyText.calls == ["load_state_dict", "setup:fit"]  # last.pt's state, pseudo-labels included
    best = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)["data"]
    assert best["pseudo"] == saved["data"]["pseudo"]


def test_predict_of_a_staged_task_uses_the_final_stage_config(tmp_path, monkeypatch):
    monkeypatch.setenv("TRAINER_TRUSTED_TARGETS", __name__)  # the checkpoint names this module's classes
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    run(toy_config(tmp_path, STAGES), run_dir)
    new = tmp_path / "new.txt"
    new.write_text("aaaaaaaaaaab\nbbbbbbbbbbba\n")
    out = tmp_path / "pred.txt"
    predict_dir = tmp_path / "predict"
    predict_dir.mkdir()
    result = run(toy_config(tmp_path, STAGES, mode="predict", ckpt=str(run_dir), input=str(new), output=str(out)),
                 predict_dir)
    assert result["count"] == 2
    assert all(line.startswith("B:") for line in out.read_text().splitlines())  # the final stage's dataset


def test_pseudo_label_needs_a_head_that_labels(tmp_path):
    stages = {"first": {}, "second": {**STAGES["second"], "head": {"_target_": "trainer.models.heads.base.Head"}}}
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with pytest.raises(UserError, match="has no pseudo_label method"):
        run(toy_config(tmp_path, stages), run_dir)


def test_reset_gives_the_student_fresh_parameters_after_the_teacher_has_labelled(tmp_path):
    """`pseudo_label.reset`: the labels are the teacher's (the same as without reset), the matching parameters are
    the newly built ones (here frozen, so they stay as reset), and a pattern that matches nothing is one line."""
    saved = {}
    for reset in ([], ["^model[.]out[.]"]):
        stages = {"first": {}, "second": {**STAGES["second"], "frozen": ["^model[.]out[.]"],
                                          "pseudo_label": {**STAGES["second"]["pseudo_label"], "reset": reset}}}
        run_dir = tmp_path / f"run{len(reset)}"
        run_dir.mkdir()
        assert run(toy_config(tmp_path, stages), run_dir)["status"] == "ok"
        saved[len(reset)] = {name: torch.load(run_dir / "checkpoints" / name, weights_only=True)
                             for name in ("best-first.pt", "best.pt")}
    teacher = saved[0]["best-first.pt"]["net"]["model.out.weight"]
    assert torch.equal(saved[0]["best.pt"]["net"]["model.out.weight"], teacher)  # frozen, not reset: the teacher's
    assert not torch.equal(saved[1]["best.pt"]["net"]["model.out.weight"], teacher)  # reset: fresh
    assert saved[1]["best.pt"]["data"]["pseudo"] == saved[0]["best.pt"]["data"]["pseudo"]  # the teacher labelled

    stages = {"first": {}, "second": {**STAGES["second"],
                                      "pseudo_label": {**STAGES["second"]["pseudo_label"], "reset": ["^model[.]rnn"]}}}
    run_dir = tmp_path / "bad"
    run_dir.mkdir()
    with pytest.raises(UserError, match=r"stages.second.pseudo_label.reset: \['\^model\[.\]rnn'\] matches no"):
        run(toy_config(tmp_path, stages), run_dir)


def test_balanced_pseudo_labels_are_the_most_confident_in_equal_numbers_per_class():
    from trainer.inference import pseudo_label

    class Fixed(nn.Module):  # the head labels each sample by its x: class x[0], confidence x[1] / 10
        def pseudo_label(self, outputs, batch):
            return batch["x"][:, 0].long().tolist(), batch["x"][:, 1] / 10

    net = nn.Module()
    net.model, net.head = nn.Identity(), Fixed()
    net.forward = lambda batch: (batch["x"], None)
    x = torch.tensor([[1, 9], [1, 8], [1, 9.5], [0, 9.2], [1, 3], [0, 5], [1, 9.9]])
    loader = [{"x": x[:4]}, {"x": x[4:]}]
    cpu = torch.device("cpu")
    assert pseudo_label(net, loader, cpu, "fp32", 0.8)[:2] == ([0, 1, 2, 3, 6], [1, 1, 1, 0, 1])
    # one confident class 0 (9.2): the single most confident of class 1 (9.9) beside it
    assert pseudo_label(net, loader, cpu, "fp32", 0.8, balance=True)[:2] == ([3, 6], [0, 1])
    assert pseudo_label(net, loader, cpu, "fp32", 0.4, balance=True)[:2] == ([2, 3, 5, 6], [1, 0, 0, 1])
    assert pseudo_label(net, loader, cpu, "fp32", 0.4, max_items=2, balance=True)[:2] == ([3, 6], [0, 1])
