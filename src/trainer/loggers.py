"""Metric loggers (CSV always, TensorBoard on request) and the learning-curve plot written at the end of a run."""
from __future__ import annotations

import csv
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

INDEX_KEYS = ("stage", "epoch", "step", "global_step")


class CSVLogger:
    """metrics.csv in the run directory: one row per logging event, one column per metric (wide format).

    Rows are kept in memory and the file is rewritten on flush, so new metric names simply add columns.
    """

    def __init__(self, run_dir: str | Path, filename: str = "metrics.csv"):
        self.path = Path(run_dir) / filename
        self.rows: list[dict[str, Any]] = []

    def log(self, metrics: dict[str, float], **index: Any) -> None:
        self.rows.append({**index, **metrics})

    def resume(self, global_step: int) -> None:
        """Reload rows written before an interruption, dropping those past the checkpoint being resumed."""
        if not self.path.is_file():
            return
        with open(self.path, newline="") as f:
            for row in csv.DictReader(f):
                if int(row["global_step"]) <= global_step:
                    self.rows.append({k: _parse(v) for k, v in row.items() if v != ""})

    def flush(self) -> None:
        if not self.rows:
            return
        columns = list(INDEX_KEYS) + sorted({k for r in self.rows for k in r} - set(INDEX_KEYS))
        tmp = self.path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(self.rows)
        tmp.replace(self.path)

    def close(self) -> None:
        self.flush()


class TensorBoardLogger:
    """Scalars to TensorBoard event files under <run_dir>/tensorboard (needs the `tensorboard` package)."""

    def __init__(self, run_dir: str | Path, subdir: str = "tensorboard"):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            from .errors import UserError

            raise UserError("logger=tensorboard needs the tensorboard package: pip install -e '.[tensorboard]'") from None
        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / subdir))

    def log(self, metrics: dict[str, float], **index: Any) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, global_step=index.get("global_step"))

    def resume(self, global_step: int) -> None:
        pass  # TensorBoard shows the re-logged steps over the old ones

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def _parse(text: str) -> Any:
    try:
        value = float(text)
    except ValueError:
        return text
    return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value


def plot_curves(rows: list[dict[str, Any]], path: str | Path) -> Path | None:
    """One panel per metric (train and val of the same metric share a panel), against the run's global step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, dict[str, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        for key, value in row.items():
            if key in INDEX_KEYS or not isinstance(value, (int, float)) or not math.isfinite(value):
                continue
            split, _, name = key.rpartition("/")
            series[name][split or key].append((row["global_step"], value))
    if not series:
        return None
    names = sorted(series)
    cols = min(3, len(names))
    nrows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.5 * cols, 3.2 * nrows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        for split, points in sorted(series[name].items()):
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=split)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
