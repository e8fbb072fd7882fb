"""The console: the progress bar redraws a few times a second at most; other packages named datasets or models do
not get in the way."""
from __future__ import annotations

import io
import os
import subprocess
import sys

import torch
from rich.console import Console

import trainer.progress as progress
from trainer.sweep import write_summary
from conftest import TINY_CAPTCHA


def test_progress_bar_redraws_at_most_every_refresh_interval(monkeypatch):
    monkeypatch.setattr(progress, "console", Console(file=io.StringIO(), force_terminal=True, width=120))
    bar = progress.ProgressBar(enabled=True, refresh_s=0.2)
    bar.start_epoch("train 1/1", total=100_000)
    redraws = []
    monkeypatch.setattr(bar._progress, "refresh", lambda: redraws.append(1))
    reads = []


    loss = torch.tensor(2.0)
    real_float = progress.ProgressBar._debiased

    def counting(self, ema):
        reads.append(1)
        return real_float(self, ema)

    monkeypatch.setattr(progress.ProgressBar, "_debiased", counting)
    import time

    t0 = time.monotonic()
    for i in range(20_000):  # far faster than 5 per second
        bar.update(i, 8, loss)
    elapsed = time.monotonic() - t0
    assert len(redraws) <= elapsed / 0.2 + 1 and len(reads) == len(redraws)  # the loss is read only when drawn
    bar.close()
    assert "samples/s" in progress.console.file.getvalue()


def test_runs_beside_a_foreign_datasets_package_and_a_local_models_py(tmp_path):
    """Hugging Face's `datasets` on the path and a `models.py` in the working folder (both common) change nothing:
    the project's packages are trainer.datasets and trainer.models."""
    fake = tmp_path / "site" / "datasets"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('this stands in for Hugging Face datasets')\n")
    (tmp_path / "models.py").write_text("raise SystemExit('the local models.py was imported')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site"), "OMP_NUM_THREADS": "1"}
    env.pop("TRAINER_RUN_STAMP", None)
    args = ["task=captcha", "debug=fast_dev_run", *TINY_CAPTCHA, f"paths.output_dir={tmp_path / 'out'}",
            f"paths.data_dir={tmp_path / 'data'}"]
    proc = subprocess.run([sys.executable, "-m", "trainer", *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_sweep_summary_shows_bracketed_overrides_as_typed(tmp_path, monkeypatch):
    """Override values such as [null,1] are data, not rich markup, which would swallow them as a style tag."""
    job = tmp_path / "0"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("- model.noise_shape=[null,1]\n- tags=[red]\n")
    (job / "results.json").write_text('{"status": "ok", "monitor": "val/acc", "best": 0.5}')
    # the project's console, captured; its _file (None: sys.stderr at each print) is put back as it was, where
    # patching `file` would pin it to this test's captured stderr for every later test
    monkeypatch.setattr(progress.console, "_file", io.StringIO())
    write_summary(tmp_path)
    shown = progress.console.file.getvalue()
    assert "model.noise_shape=[null,1] tags=[red]" in shown
