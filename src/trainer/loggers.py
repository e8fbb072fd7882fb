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
    """Scalars to TensorBoard event files under <run_dir>/tensorboard (needs the `tensorboard` package); at the end
    of the run also the hyperparameters against the final scores (the HParams tab), the resolved config as text,
    and the head's confusion matrices as images."""

    def __init__(self, run_dir: str | Path, subdir: str = "tensorboard"):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            from .errors import UserError

            raise UserError("logger=tensorboard needs the tensorboard package: pip install -e '.[tensorboard]'") from None
        self.run_dir = Path(run_dir)
        self.writer = SummaryWriter(log_dir=str(self.run_dir / subdir))
        self.last: dict[str, float] = {}  # the latest value of each metric: the final scores, for the HParams tab
        self.step = 0

    def log(self, metrics: dict[str, float], **index: Any) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, global_step=index.get("global_step"))
            if isinstance(value, (int, float)) and math.isfinite(value):
                self.last[key] = float(value)
        self.step = index.get("global_step") or self.step

    def resume(self, global_step: int) -> None:
        pass  # TensorBoard shows the re-logged steps over the old ones

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        try:
            self._log_run_record()
        finally:
            self.writer.close()

    def _log_run_record(self) -> None:
        configs = sorted(self.run_dir.glob("config*.yaml"), key=lambda p: p.stat().st_mtime)
        if configs:
            text = "\n\n".join(f"**{p.name}**\n\n" + "\n".join("    " + line for line in p.read_text().splitlines())
                                for p in configs)
            self.writer.add_text("config", text, global_step=self.step)
            hparams = hyperparameters(configs[-1])  # the final stage's
            scores = {k: v for k, v in self.last.items() if k.startswith("test/")} or \
                     {k: v for k, v in self.last.items() if k.startswith("val/")}
            if hparams and scores:
                self.writer.add_hparams(hparams, {f"hparam/{k}": v for k, v in scores.items()}, run_name=".")
        for image in sorted(self.run_dir.glob("confusion_*.png")):
            import numpy as np
            from PIL import Image

            with Image.open(image) as im:
                pixels = np.asarray(im.convert("RGB"))
            self.writer.add_image(image.stem, pixels, global_step=self.step, dataformats="HWC")


#: The config sections whose values go to TensorBoard's HParams tab (flattened: optim.lr, model.widths, ...).
HPARAM_SECTIONS = ("model", "head", "optim", "sched", "dataset", "trainer")
HPARAM_SKIP = ("num_workers", "pin_memory", "render_workers", "cache", "cache_dir", "root", "download",
               "progress", "progress_refresh_s", "device", "log_every_n_steps")


def hyperparameters(config_yaml: Path) -> dict[str, Any]:
    """The run's settings as flat `section.key` -> number, string or bool (lists as text), from its config.yaml."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(OmegaConf.load(config_yaml), resolve=False)
    out: dict[str, Any] = {"task": cfg.get("task_name"), "seed": cfg.get("seed")}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if str(key) not in HPARAM_SKIP:
                    walk(value, f"{prefix}.{key}")
        elif node is None or isinstance(node, (bool, int, float, str)):
            out[prefix] = "null" if node is None else node
        else:
            out[prefix] = str(node)

    for section in HPARAM_SECTIONS:
        walk(cfg.get(section) or {}, section)
    return {k: v for k, v in out.items() if v is not None}


def _parse(text: str) -> Any:
    try:
        value = float(text)
    except ValueError:
        return text
    return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value


#: One colour per split, the same in every panel of both figures; a test score is one marker at the last step.
SPLIT_COLOURS = {"train": "tab:blue", "val": "tab:orange", "test": "tab:green", "train_eval": "tab:purple"}
OTHER_COLOURS = ("tab:red", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")
#: A metric named <metric>_<class> (acc_sandal, f1_shirt, acc_pos3): one of a per-class family.
PER_CLASS_PREFIXES = ("acc", "f1", "precision", "recall", "iou", "ap")


def curve_panels(rows: list[dict[str, Any]], monitor: str | None = None) -> tuple[list[str], list[str]]:
    """The panels of the two figures, in order: first loss, the monitored metric and the learning rate, then the
    other metrics; and, apart, the per-class (per-position) families: metric names with a common prefix before
    '_' that is itself a metric, shared by three or more names (acc_sandal, acc_shirt, ...; acc_pos1..4)."""
    names = []
    for row in rows:
        for key, value in row.items():
            if key in INDEX_KEYS or not isinstance(value, (int, float)):
                continue
            name = key.rpartition("/")[2]
            if name not in names:
                names.append(name)
    prefixes: dict[str, int] = defaultdict(int)
    for name in names:
        if "_" in name:
            prefixes[name.split("_", 1)[0]] += 1
    family = {n for n in names if "_" in n and n.split("_", 1)[0] in PER_CLASS_PREFIXES
              and prefixes[n.split("_", 1)[0]] >= 3}
    watched = monitor.rpartition("/")[2] if monitor else None
    first = [n for n in ("loss", watched, "lr") if n and n in names]
    main = first + sorted(n for n in names if n not in first and n not in family)
    return main, sorted(family)


def plot_curves(rows: list[dict[str, Any]], path: str | Path, monitor: str | None = None) -> Path | None:
    """curves.png: loss, the monitored metric and the learning rate first, then the other metrics, against the
    run's global step (train and validation of a metric share a panel; stage changes are dotted lines); the
    per-class curves, when the head logs them, go to a second figure beside it (curves_per_class.png)."""
    import matplotlib

    matplotlib.use("Agg")

    series: dict[str, dict[str, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    stage_starts: list[tuple[float, str]] = []
    for row in rows:
        if row.get("stage") is not None and (not stage_starts or stage_starts[-1][1] != row["stage"]):
            stage_starts.append((row.get("global_step", 0), str(row["stage"])))
        for key, value in row.items():
            if key in INDEX_KEYS or not isinstance(value, (int, float)) or not math.isfinite(value):
                continue
            split, _, name = key.rpartition("/")
            series[name][split or key].append((row["global_step"], value))
    main, per_class = curve_panels(rows, monitor)
    main = [n for n in main if n in series]
    if not main:
        return None
    path = Path(path)
    _figure(series, main, path, stage_starts, monitor)
    extra = path.with_name(path.stem + "_per_class" + path.suffix)
    if per_class:
        _figure(series, [n for n in per_class if n in series], extra, stage_starts, None)
    elif extra.is_file():
        extra.unlink()
    return path


def _figure(series, names: list[str], path: Path, stage_starts: list[tuple[float, str]], monitor: str | None) -> None:
    import matplotlib.pyplot as plt

    cols = min(3, len(names))
    nrows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.5 * cols, 3.2 * nrows), squeeze=False)
    others = iter(OTHER_COLOURS * 10)
    colours = dict(SPLIT_COLOURS)
    for ax, name in zip(axes.flat, names):
        for split, points in sorted(series[name].items()):
            colour = colours.setdefault(split, next(others)) if split != "lr" else "tab:gray"
            xs, ys = zip(*points)
            if split == "test":
                ax.plot(xs, ys, linestyle="none", marker="*", markersize=10, color=colour, label=split)
            else:
                ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, color=colour, label=split)
        for x, stage in stage_starts[1:]:
            ax.axvline(x, color="0.6", linestyle=":", linewidth=1)
        watched = monitor is not None and name == monitor.rpartition("/")[2]
        ax.set_title(f"{name} (monitored)" if watched else name, fontweight="bold" if watched else None)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if name == "lr":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        else:
            ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
