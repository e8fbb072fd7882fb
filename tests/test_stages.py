"""Stages end to end through the CLI: init from the previous stage's best weights, frozen parameters, a replaced
optimizer, per-stage checkpoints and configs; resuming a finished multi-stage run retrains nothing."""
from __future__ import annotations

import json

import torch

from conftest import TINY_CAPTCHA, TINY_DATA, TINY_MODEL, TINY_TRAINER, cli, latest_run

STAGES = ("stages={pretrain: {trainer: {max_epochs: 1}}, "
          "finetune: {init: {checkpoint: previous}, frozen: ['^model\\.features\\.'], "
          "optim: {_target_: torch.optim.SGD, _partial_: true, lr: 0.05, momentum: 0.9}, "
          "trainer: {max_epochs: 1}}}")


def test_two_stages_seed_freeze_and_switch_optimizer(workdir):
    cli(workdir, "task=captcha", *TINY_CAPTCHA, STAGES)
    run = latest_run(workdir)
    ckpts = run / "checkpoints"
    assert (ckpts / "best-pretrain.pt").is_file() and (ckpts / "best.pt").is_file()
    assert "torch.optim.Adam" in (run / "config.pretrain.yaml").read_text()
    finetune_cfg = (run / "config.finetune.yaml").read_text()
    assert "torch.optim.SGD" in finetune_cfg and "betas" not in finetune_cfg  # replaced, not merged

    first = torch.load(ckpts / "best-pretrain.pt", weights_only=True)["net"]
    second = torch.load(ckpts / "last.pt", weights_only=True)["net"]
    features = [k for k in first if k.startswith("model.features.")]
    heads = [k for k in first if k.startswith("model.classifiers.")]
    assert features and heads
    for k in features:  # frozen in stage 2, and seeded from stage 1's best
        assert torch.equal(first[k], second[k]), k
    assert any(not torch.equal(first[k], second[k]) for k in heads)  # trained in stage 2
    results = json.loads((run / "results.json").read_text())
    assert results["status"] == "ok" and "test/acc" in results["test"]
    assert results["best_ckpt"] == str(ckpts / "best.pt") and results["best_step"] in (8, 16), results  # finetune's
    assert results["best_epoch"] == results["best_step"] // 8  # 256 images / 32 a batch: 8 steps an epoch
    counters = torch.load(ckpts / "last.pt", weights_only=True)["counters"]
    assert counters["earlier_stages_seconds"] > 0  # pretrain's time, carried into finetune's counters
    assert results["fit_seconds"] == round(counters["earlier_stages_seconds"] + counters["train_seconds"], 1)

    # A finished run is not resumed (which would rewrite its records); it says how to test it again.
    proc = cli(workdir, f"resume={run}", check=False)
    assert proc.returncode == 2 and "that run has finished (results.json); nothing to resume" in proc.stderr

    # One killed during its final test (every stage done, no results.json) trains nothing more, tests, and keeps
    # its training record.
    (run / "results.json").unlink()
    cli(workdir, f"resume={run}")
    again = torch.load(ckpts / "last.pt", weights_only=True)
    assert again["counters"]["stage_index"] == 1 and again["counters"]["stage_done"]
    for k in second:
        assert torch.equal(second[k], again["net"][k]), k
    resumed = json.loads((run / "results.json").read_text())
    for key in ("monitor", "best", "best_epoch", "best_step", "best_ckpt", "fit_seconds", "steps", "stop_reason",
                "test"):
        assert resumed[key] == results[key] and resumed[key] is not None, (key, resumed, results)
    assert results["stop_reason"] == "max_epochs=2"
    overrides = (run / ".hydra" / "overrides.yaml").read_text()
    assert "resume=" not in overrides  # the resume's own record went to .hydra/resume-<stamp>/

    # A resume that changes the budget or the model is refused before it writes anything.
    (run / "results.json").unlink()
    for change, words in (("trainer.max_epochs=5", "stage 'finetune' finished with trainer.max_epochs=2 and the "
                                                   "config now says 5"),
                          ("model.blocks=3", "the model config changed (model.blocks: 2 -> 3)")):
        proc = cli(workdir, f"resume={run}", change, check=False)
        assert proc.returncode == 2 and words in proc.stderr.strip().splitlines()[-1], proc.stderr[-1500:]
    assert (run / ".hydra" / "overrides.yaml").read_text() == overrides  # failed attempts left no trace
    cli(workdir, f"resume={run}")  # and the run still resumes

    # Stopped inside its last stage, a resume into a longer plan is refused by `fit` (which counts the steps); the
    # stage's config.yaml still says what the run trained with.
    (run / "results.json").unlink()
    state = torch.load(ckpts / "last.pt", weights_only=False)
    state["counters"]["stage_done"] = False
    torch.save(state, ckpts / "last.pt")
    saved_config = (run / "config.finetune.yaml").read_text()
    proc = cli(workdir, f"resume={run}", "trainer.max_epochs=3", check=False)
    assert proc.returncode == 2 and "was planned for" in proc.stderr, proc.stderr[-1500:]
    assert (run / "config.finetune.yaml").read_text() == saved_config


def test_overfit_debug_mode_memorises_two_batches(workdir):
    cli(workdir, "task=captcha", *TINY_DATA, *TINY_TRAINER, "debug=overfit", "trainer.max_epochs=120", "optim.lr=3e-3",
        "dataset.train_shear=0",  # (a lean drawn anew each epoch is not two batches to memorise)
        "sched=none", "model=captcha_crnn", "model.widths=[16,16,32,32]", "model.rnn_hidden=32", "model.dropout=0")
    results = json.loads((latest_run(workdir) / "results.json").read_text())
    assert results["best"] >= 0.99, results  # val = the same two training batches


def test_command_line_and_debug_settings_win_over_the_stages(workdir):
    """A stage's own `trainer.max_epochs` must not undo `trainer.max_epochs=1` or `debug=...` on the command line."""
    three = STAGES.replace("max_epochs: 1", "max_epochs: 3")
    args = ["task=captcha", *TINY_MODEL, *TINY_DATA, "trainer.progress=false", three]
    proc = cli(workdir, *args, "trainer.max_epochs=1")
    results = json.loads((latest_run(workdir) / "results.json").read_text())
    assert results["steps"] == 2 * (256 // 32), results  # one epoch per stage, not three
    assert "trainer.max_epochs=1 from the command line or debug=, over the stage's 3" in proc.stderr

    # fast_dev_run writes no checkpoints: the second stage starts from the first one's weights in memory
    proc = cli(workdir, *args, "debug=fast_dev_run")
    assert "initialised" in proc.stderr and "fast_dev_run: in memory" in proc.stderr, proc.stderr[-2000:]
    results = json.loads((latest_run(workdir) / "results.json").read_text())
    assert results["status"] == "ok" and results["steps"] == 2 and "test/acc" in results["test"], results
