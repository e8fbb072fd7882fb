"""A new user's first hour (issue 22): the first run's rendering shows progress, renders only what a debug preset
uses and survives a Ctrl-C; no long piece of work is silent; the console and the run's records; another IDX dataset
by YAML alone. In process wherever a test can be: one CLI subprocess (a real Ctrl-C to the process group)."""
from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from rich.console import Console

import trainer.progress as progress
from trainer import checks, cli, cli_info, loggers, loop
from trainer.config import trainer_config
from trainer.datasets import captcha
from trainer.datasets.captcha import CaptchaData, CaptchaFolder, cached_split
from trainer.errors import UserError
from trainer.loop import train_stage
from trainer.stages import sample_limits
from trainer.state import Counters
from conftest import ROOT, TINY_MODEL
from test_fit import toy_stage
from vision_fixtures import write_fashion

# ---- progress displays ---------------------------------------------------------------------------------------------


def test_work_in_a_pipe_logs_count_rate_and_eta_now_and_then(caplog):
    assert not progress.console.is_terminal  # pytest captures stderr: the pipe case
    with caplog.at_level(logging.INFO, logger="trainer"):
        with progress.Activity("rendering train captchas", 1000, unit="captchas", first_log_s=0.0,
                               log_every_s=3600) as shown:
            shown.advance(100)
            shown.advance(100)  # within the interval: no second line
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1, lines
    assert lines[0].startswith("rendering train captchas: 100/1,000 in ") and "captchas/s, eta " in lines[0]


def test_short_work_in_a_pipe_says_nothing(caplog):
    with caplog.at_level(logging.INFO, logger="trainer"):
        with progress.Activity("val", 10) as shown:
            for _ in range(10):
                shown.advance(1, 64)
    assert not caplog.records


def test_a_validation_bar_shows_beside_the_epoch_bar(monkeypatch):
    """Rich allows one live display: the epoch's bar and a validation's (inside the epoch) share it."""
    monkeypatch.setattr(progress, "console", Console(file=io.StringIO(), force_terminal=True, width=160))
    bar = progress.ProgressBar(enabled=True, refresh_s=0.0)
    bar.set_run(lambda: 754.0)
    bar.start_epoch("train 1/2", total=100)
    bar.update(5, 32, torch.tensor(1.0))
    with progress.Activity("val", 20, refresh_s=0.0, count_name=" batches") as shown:
        shown.advance(1, 64)
        shown.advance(1, 64)
    bar.update(6, 32, torch.tensor(1.0))
    bar.close()
    assert progress._Live.progress is None  # the display stops with its last bar
    shown_text = progress.console.file.getvalue()
    assert "val" in shown_text and "samples/s" in shown_text and "run eta 12:34" in shown_text


def test_eta_formatting():
    assert progress.duration(75) == "1:15" and progress.duration(3 * 3600 + 5) == "3:00:05"
    assert progress.duration(float("inf")) == "?"
    assert progress.fmt(0.5406504065040652) == "0.5407" and progress.fmt(1234567) == "1,234,567"


# ---- training never goes quiet ---------------------------------------------------------------------------------------


def test_a_short_piped_run_logs_its_loss_even_with_a_longer_log_interval(tmp_path, monkeypatch, caplog):
    """log_every_n_steps far beyond the run: the time fallback still logs the loss (with the run's ETA)."""
    monkeypatch.setattr(loop, "FIRST_LOG_S", 0.0)
    stage = toy_stage(tmp_path, max_epochs=2, log_every_n_steps=1000)
    with caplog.at_level(logging.INFO, logger="trainer"):
        train_stage(stage, torch.device("cpu"), None, Counters())
    lines = [r.getMessage() for r in caplog.records if "loss=" in r.getMessage()]
    assert lines and "run eta" in lines[0] and "1 of 8 steps" in lines[0], lines


def test_loss_lines_reach_the_log_file_while_a_bar_shows_them():
    """On a terminal the bar shows the loss, so the console handler drops the lines; run.log keeps them."""
    record = logging.LogRecord("trainer", logging.INFO, __file__, 1, "loss=1.0", None, None)
    record.console = False
    assert not progress._ConsoleFilter().filter(record)
    assert progress._ConsoleFilter().filter(logging.LogRecord("trainer", logging.INFO, __file__, 1, "x", None, None))


# ---- the first run: rendering -----------------------------------------------------------------------------------------
SMALL = dict(length=4, width=32, height=12, render_size=(160, 60))


def test_rendering_interrupted_keeps_its_parts_and_the_next_run_continues(tmp_path, monkeypatch):
    monkeypatch.setattr(captcha, "CHUNK", 4)
    real_write, written = captcha._write_part, []

    def write_then_interrupt(parts, start, stop, images, labels):
        real_write(parts, start, stop, images, labels)
        written.append(start)
        if len(written) == 2:
            raise KeyboardInterrupt  # Ctrl-C after two parts

    monkeypatch.setattr(captcha, "_write_part", write_then_interrupt)
    with pytest.raises(KeyboardInterrupt) as e:
        cached_split(tmp_path, 7, 14, workers=1, **SMALL)
    assert "the 8 of 14 captchas rendered so far are kept in" in str(e.value)
    assert "the next run continues from there" in str(e.value)

    monkeypatch.setattr(captcha, "_write_part", real_write)
    rendered = []
    real_chunk = captcha._render_chunk
    monkeypatch.setattr(captcha, "_render_chunk", lambda job: rendered.append(job[1:3]) or real_chunk(job))
    arrays = cached_split(tmp_path, 7, 14, workers=1, **SMALL)
    assert rendered == [(8, 12), (12, 14)]  # only what was missing
    fresh = cached_split(tmp_path / "fresh", 7, 14, workers=1, **SMALL)
    assert np.array_equal(arrays["x"], fresh["x"]) and np.array_equal(arrays["y"], fresh["y"])
    assert not list((tmp_path / "captcha").glob("*.parts"))  # joined into the cache file


def test_a_smaller_split_is_read_from_a_larger_cache(tmp_path, monkeypatch):
    full = cached_split(tmp_path, 3, 12, workers=1, **SMALL)
    monkeypatch.setattr(captcha, "_render_parts", lambda *a, **k: pytest.fail("rendered again"))
    part = cached_split(tmp_path, 3, 5, workers=1, **SMALL)
    assert np.array_equal(part["x"], full["x"][:5]) and len(part["y"]) == 5


@pytest.mark.parametrize("preset, expected", [
    ({"fast_dev_run": True}, {"train": 128, "val": 512, "test": 512}),
    ({"max_epochs": 2, "limit_train_batches": 5, "limit_val_batches": 2, "limit_test_batches": 2},  # debug=limit
     {"train": 1280, "val": 1024, "test": 1024}),
    ({"overfit_batches": 2}, {"train": 1024}),  # validated on the training split, in eval batches
    ({"limit_train_batches": 0.5}, {}),  # a fraction: no bound known before the data is read
    ({"max_steps": 3, "accumulate_grad_batches": 2}, {"train": 768}),
])
def test_debug_presets_bound_what_the_data_module_reads(preset, expected):
    data = CaptchaData(batch_size=128, eval_batch_size=512)
    limits = sample_limits(trainer_config(OmegaConf.create(preset)), data)
    assert limits == expected
    data.limit_samples(limits)
    assert data.sizes == {split: min(expected.get(split, n), n) for split, n in
                          {"train": 100_000, "val": 2_000, "test": 10_000}.items()}


def test_ctrl_c_during_rendering_is_one_line_and_keeps_the_parts(tmp_path):
    """A real Ctrl-C (SIGINT to the whole process group, as a terminal sends it) while two processes render: one
    line, no worker traceback, exit 130, the finished parts kept."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    env.pop("TRAINER_RUN_STAMP", None)
    args = [sys.executable, "-m", "trainer", "task=captcha", *TINY_MODEL, "dataset.width=32", "dataset.height=12",
            "dataset.train_size=6000", "dataset.val_size=0", "dataset.test_size=0", "dataset.render_workers=2",
            f"paths.output_dir={tmp_path / 'out'}", f"paths.cache_dir={tmp_path / 'cache'}"]
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not list((tmp_path / "cache").glob("captcha/*.parts/*.npz")):
            assert proc.poll() is None and time.monotonic() < deadline, "no part rendered"
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGINT)
        err = proc.communicate(timeout=60)[1]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "error:" not in err, err[-3000:]
    last = [line for line in err.splitlines() if line.strip()][-1]
    assert last.startswith("interrupted: rendering stopped; the ") and "are kept in" in last, err[-2000:]
    assert err.endswith("\n")
    assert list((tmp_path / "cache").glob("captcha/*.parts/*.npz"))


# ---- the command line -----------------------------------------------------------------------------------------------


def test_version_and_help(capsys):
    cli.main(["--version"])
    out = capsys.readouterr().out
    assert out.startswith("trainer (stagefit) 0.1.0") and "torch 2." in out
    cli_info.print_help()
    help_text = capsys.readouterr().out
    assert "  captcha*" in help_text and "python -m trainer runs" in help_text


def test_cfg_job_resolve_prints_a_resolved_config_and_makes_no_folder(tmp_path, capsys):
    out_dir = tmp_path / "nothing" / "outputs"
    cli.main(["--cfg", "job", "--resolve", f"paths.output_dir={out_dir}", "optim.lr=0.25"])
    text = capsys.readouterr().out
    assert "lr: 0.25" in text and "task_name: captcha" in text and "${paths" not in text
    assert text.startswith("# left as written") and "num_classes: ${data_info.num_classes}" in text
    assert not (tmp_path / "nothing").exists()
    cli.main(["--cfg", "job", "--resolve", "--package", "optim", f"paths.output_dir={out_dir}"])
    assert capsys.readouterr().out.startswith("_target_: torch.optim.AdamW")


def test_checking_the_output_folder_leaves_none_behind(tmp_path):
    checks._check_output_dir(str(tmp_path / "a" / "b"))
    assert not (tmp_path / "a").exists()
    with pytest.raises(UserError, match="cannot create paths.output_dir"):
        checks._check_output_dir("/proc/version/outputs")


def test_runs_lists_task_state_best_metric_and_folder(tmp_path, capsys):
    def run(path, record=None, last=False):
        path.mkdir(parents=True)
        (path / "command.txt").write_text("python -m trainer\n")
        if record is not None:
            (path / "results.json").write_text(json.dumps(record))
        if last:
            (path / "checkpoints").mkdir()
            (path / "checkpoints" / "last.pt").write_bytes(b"")

    run(tmp_path / "captcha" / "2026-01-01_10-00-00", {"task": "captcha", "status": "ok", "monitor": "val/acc",
                                                      "best": 0.99123456, "test": {"test/acc": 0.9944},
                                                      "fit_seconds": 1731.0})
    run(tmp_path / "segmentation" / "2026-01-02_10-00-00", {"task": "segmentation", "status": "interrupted"},
        last=True)
    run(tmp_path / "captcha" / "2026-01-03_10-00-00", last=True)
    run(tmp_path / "captcha" / "eval" / "2026-01-04_10-00-00", {"task": "captcha", "status": "ok", "mode": "eval",
                                                               "test": {"test/acc": 0.5}})
    with pytest.raises(SystemExit) as e:
        cli.main(["runs", str(tmp_path)])
    out = capsys.readouterr().out
    assert e.value.code == 0
    rows = [line for line in out.splitlines() if "2026-" in line]
    assert len(rows) == 4
    assert "captcha" in rows[0] and " ok " in rows[0] and "val/acc 0.9912" in rows[0] and "test/acc 0.9944" in rows[0]
    assert "28.9 min" in rows[0]
    assert "interrupted (resumable)" in rows[1] and "killed (resumable)" in rows[2] and "eval" in rows[3]


# ---- the records -----------------------------------------------------------------------------------------------------


def test_the_environment_record_says_what_ran_where():
    from trainer.run import environment

    env = environment(torch.device("cpu"))
    assert set(env["versions"]) >= {"torch", "torchvision", "hydra-core", "numpy", "stagefit", "python"}
    assert env["versions"]["torch"] == torch.__version__  # the build (+cpu, +cu130), not only the version
    assert env["device"].startswith("cpu") and env["command"]
    if (ROOT / ".git").exists():
        assert len(env["git"]["commit"]) == 40 and isinstance(env["git"]["dirty"], bool)


def test_curves_put_loss_monitor_and_lr_first_and_per_class_apart(tmp_path):
    rows = [{"stage": "train", "epoch": 1, "step": s, "global_step": s, "train/loss": 1.0 / s, "lr": 0.1}
            for s in range(1, 4)]
    rows.append({"stage": "train", "epoch": 1, "step": 3, "global_step": 3, "val/loss": 0.5, "val/macro_f1": 0.4,
                 "val/acc": 0.6, **{f"val/acc_{c}": 0.5 for c in ("shirt", "coat", "bag")}})
    main, per_class = loggers.curve_panels(rows, "val/macro_f1")
    assert main[:3] == ["loss", "macro_f1", "lr"] and "acc" in main
    assert per_class == ["acc_bag", "acc_coat", "acc_shirt"]
    assert loggers.plot_curves(rows, tmp_path / "curves.png", monitor="val/macro_f1") == tmp_path / "curves.png"
    assert (tmp_path / "curves_per_class.png").is_file()


def test_tensorboard_gets_hyperparameters_the_config_and_the_confusion_matrix(tmp_path):
    pytest.importorskip("tensorboard")
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (tmp_path / "config.yaml").write_text("task_name: fashion_mnist\nseed: 1\noptim:\n  _target_: torch.optim.SGD\n"
                                          "  lr: 0.1\nmodel:\n  widths: [8, 16]\n")
    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "confusion_test.png")
    tb = loggers.TensorBoardLogger(tmp_path)
    tb.log({"train/loss": 1.0}, global_step=1)
    tb.log({"test/acc": 0.9}, global_step=2)
    tb.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"images": 0, "tensors": 0})
    events.Reload()
    tags = events.Tags()
    assert "confusion_test" in tags["images"]
    assert any(t.startswith("config") for t in tags["tensors"])
    assert "hparams" in events.PluginTagToContent("hparams") or events.PluginTagToContent("hparams")
    assert loggers.hyperparameters(tmp_path / "config.yaml")["optim.lr"] == 0.1


def test_eval_table_title_does_not_break_a_long_path(monkeypatch):
    monkeypatch.setattr(progress, "console", Console(file=io.StringIO(), width=60))
    path = "/home/someone/projects/outputs/fashion_mnist/2026-11-24_02-17-57/checkpoints/best.pt"
    progress.summary_table("eval on test", {"checkpoint": path, "test/acc": 0.9467})
    lines = progress.console.file.getvalue().splitlines()
    assert lines[0].strip() == "eval on test" and any("0.9467" in line for line in lines)


# ---- another dataset of a known format: YAML only --------------------------------------------------------------------


def test_mnist_by_yaml_alone_reports_its_own_class_names(tmp_path):
    from hydra import compose, initialize_config_module
    from hydra.utils import instantiate

    write_fashion(tmp_path / "mnist" / "MNIST" / "raw", n_train=60, n_test=20)  # torchvision's MNIST layout
    with initialize_config_module(config_module="trainer.conf", version_base="1.3"):
        cfg = compose("config", overrides=["task=fashion_mnist", "dataset=mnist", f"paths.data_dir={tmp_path}",
                                           "dataset.val_size=10"])
    assert cfg.dataset.hflip == 0.0  # the dataset's own setting: a mirrored digit is no digit
    data = instantiate(cfg.dataset)
    data.setup("fit")
    assert data.class_names == [str(d) for d in range(10)] and data.info["class_names"][0] == "0"
    assert data.mean == pytest.approx(0.1307)
    from trainer.models.heads.classification import ClassificationHead

    head = ClassificationHead(num_classes=10, class_names=data.class_names)
    head.reset()
    head.update(torch.zeros(4, 10), {"y": torch.tensor([0, 1, 2, 3])})
    assert "acc_0" in head.compute() and not any("t_shirt" in k for k in head.compute())


def test_too_few_class_names_is_one_line(tmp_path):
    from trainer.datasets.fashion_mnist import FashionMNISTData

    write_fashion(tmp_path, n_train=30, n_test=10)
    data = FashionMNISTData(root=str(tmp_path), classes=["a", "b", "c"], val_size=5)
    with pytest.raises(UserError, match="dataset.classes names 3 classes"):
        data.setup("fit")


def test_a_captcha_folder_with_digits_takes_its_alphabet_from_config(tmp_path):
    from PIL import Image

    folder = tmp_path / "caps"
    folder.mkdir()
    for i, name in enumerate(["a1b2", "9zz0", "k3k3", "0000"] * 3):
        Image.fromarray(captcha.render(i)[0]).save(folder / f"{name}_{i}.png")
    data = CaptchaFolder(root=str(folder), alphabet="abcdefghijklmnopqrstuvwxyz0123456789", width=32, height=12,
                         val_fraction=0.25, test_fraction=0.25, batch_size=2)
    data.setup("fit")
    assert data.info["num_classes"] == 36
    labels = np.concatenate([data.splits[s].__getitem__(i)["y"].numpy()[None] for s in data.splits
                             for i in range(len(data.splits[s]))])
    assert labels.max() >= 26  # digits are classes 26..35
    with pytest.raises(UserError, match=r"not in the alphabet: 0\)"):
        CaptchaFolder(root=str(folder), width=32, height=12).setup("fit")
