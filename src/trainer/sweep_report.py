"""Metrics against a swept parameter, for any Hydra multirun: a table (CSV and markdown) and a plot.

For each job of a sweep folder it reads the swept values (.hydra/overrides.yaml) and the metrics logged at one
validation of metrics.csv: the one where the monitored metric was best (`at: best`, the weights that best.pt holds)
or the last one (`at: last`). One row per job: the parameter, the other overrides that vary across the sweep (each
combination is a series in the plot), the chosen metrics, and optionally a gap (`gap: [a, b]` adds the column a - b,
e.g. train accuracy minus validation accuracy). Written to <sweep>/report.csv, report.md and report.png.

Made at the end of a sweep by the Hydra callback `SweepReport` (declared in a task's `hydra.callbacks`), or on an
existing multirun folder by one command, which takes its settings from that callback's entry in the sweep's saved
Hydra config when none are given (without one: the first override that varies across the jobs, against the
monitored metric and its test counterpart):

    python -m trainer.sweep_report outputs/multirun/2026-11-23_21-00-00 [--param model.p] [--metrics a b]

The same command also prints the sweep's table (trainer.sweep: every job's overrides against its best and final
monitored metric and test metrics, fitted to 100 columns; `--per-class` keeps per-class metrics) and writes
summary.csv, params.png (the best monitored metric against each swept parameter, on a log axis where its values span
a decade or more) and curves.png (every job's learning curves overlaid: training loss and the monitored metric
against the step).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path
from typing import Any, Sequence

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from .errors import UserError


def _value(text: str) -> Any:
    try:
        number = float(text)
        return int(number) if number.is_integer() and "." not in text and "e" not in text.lower() else number
    except ValueError:
        return text


def _job_dirs(sweep_dir: Path) -> list[Path]:
    return sorted((p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))


def _overrides(job_dir: Path) -> dict[str, str]:
    path = job_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return {}
    out = {}
    for o in OmegaConf.load(path):
        key, _, value = str(o).partition("=")
        key = key.lstrip("+~")
        if key != "resume" and not key.startswith("hydra."):  # how the job was run, not what it tried
            out[key] = value
    return out


def _inferred_settings(sweep_dir: Path) -> dict[str, Any]:
    """For a sweep without a SweepReport entry: its first varying override as the parameter, and its monitored
    metric (at the best validation) with the test metric of the same name as the columns."""
    jobs = _job_dirs(sweep_dir)
    overrides = [_overrides(j) for j in jobs]
    keys = list(dict.fromkeys(k for o in overrides for k in o))
    varying = [k for k in keys if len({o.get(k) for o in overrides}) > 1]
    monitor = None
    for job_dir in jobs:
        path = job_dir / "results.json"
        monitor = monitor or (json.loads(path.read_text()).get("monitor") if path.is_file() else None)
    settings: dict[str, Any] = {}
    if varying:
        settings["param"] = varying[0]
    if monitor:
        settings["metrics"] = [monitor, "test/" + monitor.split("/", 1)[-1]]
    return settings


def _validation_row(job_dir: Path, monitor: str | None, best: float | None, at: str) -> dict[str, float]:
    path = job_dir / "metrics.csv"
    if not path.is_file() or not monitor:
        return {}
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get(monitor)]
    if rows and "stage" in rows[0]:  # a staged run: its best.pt and final metrics come from its last stage
        rows = [r for r in rows if r["stage"] == rows[-1]["stage"]]
    if not rows:
        return {}
    if at == "best" and best is not None:
        row = min(rows, key=lambda r: abs(float(r[monitor]) - best))  # first of equals: where it was reached
    else:
        row = rows[-1]
    return {k: float(v) for k, v in row.items() if v not in ("", None) and k not in ("stage",)}


def collect(sweep_dir: str | Path, param: str, metrics: Sequence[str], gap: Sequence[str] | None = None,
            at: str = "best") -> tuple[list[dict[str, Any]], list[str]]:
    """Rows of (parameter, varying overrides, metrics, gap), sorted by series then parameter; and the series keys."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise UserError(f"sweep folder not found: {sweep_dir}")
    if at not in ("best", "last"):
        raise UserError(f"at='{at}' is not best or last")
    jobs = []
    for job_dir in _job_dirs(sweep_dir):
        results_path = job_dir / "results.json"
        results = json.loads(results_path.read_text()) if results_path.is_file() else {}
        jobs.append((job_dir, _overrides(job_dir), results))
    if not jobs:
        raise UserError(f"{sweep_dir} holds no job folders (0/, 1/, ...); give a multirun folder")
    all_keys = list(dict.fromkeys(k for _, o, _ in jobs for k in o))
    varying = [k for k in all_keys if len({o.get(k) for _, o, _ in jobs}) > 1]
    if param not in all_keys:
        raise UserError(f"'{param}' is not an override of the jobs in {sweep_dir}; swept keys: "
                        f"{', '.join(varying) or 'none'}")
    series_keys = [k for k in varying if k != param]
    rows = []
    for job_dir, overrides, results in jobs:
        row: dict[str, Any] = {"job": int(job_dir.name), param: _value(overrides.get(param, ""))}
        for k in series_keys:
            row[k] = overrides.get(k, "")
        row["status"] = results.get("status", "missing")
        found = _validation_row(job_dir, results.get("monitor"), results.get("best"), at)
        found.update(results.get("test") or {})
        for m in metrics:
            row[m] = found.get(m, math.nan)
        if gap:
            a, b = gap
            row[gap_name(gap)] = found.get(a, math.nan) - found.get(b, math.nan)
        rows.append(row)
    first_seen: dict[tuple, int] = {}
    for r in rows:  # series in the order the sweep ran them
        first_seen.setdefault(tuple(r[k] for k in series_keys), len(first_seen))
    rows.sort(key=lambda r: (first_seen[tuple(r[k] for k in series_keys)], _sort_key(r[param])))
    return rows, series_keys


def gap_name(gap: Sequence[str]) -> str:
    return f"gap ({gap[0]} - {gap[1]})"


def _sort_key(v: Any) -> tuple:
    return (0, v, "") if isinstance(v, (int, float)) else (1, 0, str(v))


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.4f}"
    return str(v)


def write_report(sweep_dir: str | Path, param: str, metrics: Sequence[str], gap: Sequence[str] | None = None,
                 at: str = "best", title: str | None = None) -> list[dict[str, Any]]:
    sweep_dir = Path(sweep_dir)
    rows, series_keys = collect(sweep_dir, param, metrics, gap, at)
    columns = list(rows[0])
    with open(sweep_dir / "report.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    lines = [f"| {' | '.join(columns)} |", f"|{'|'.join('---' for _ in columns)}|"]
    lines += [f"| {' | '.join(str(r[c]) if c == param else _fmt(r[c]) for c in columns)} |" for r in rows]
    heading = title or f"{', '.join(metrics)} against {param}"
    note = f"Metrics at the {at} validation of each job ({sweep_dir})."
    (sweep_dir / "report.md").write_text(f"# {heading}\n\n{note}\n\n" + "\n".join(lines) + "\n")
    plot(rows, series_keys, param, metrics, gap, sweep_dir / "report.png", title)
    return rows


def plot(rows: list[dict[str, Any]], series_keys: list[str], param: str, metrics: Sequence[str],
         gap: Sequence[str] | None, path: Path, title: str | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 2 if gap else 1
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4.2), squeeze=False)
    series: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        series.setdefault(tuple(r[k] for k in series_keys), []).append(r)
    styles = ["-", "--", ":", "-."]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    numeric = all(isinstance(r[param], (int, float)) for r in rows)
    for s, (key, members) in enumerate(series.items()):
        label = ", ".join(f"{k}={v}" for k, v in zip(series_keys, key))
        xs = [r[param] for r in members] if numeric else list(range(len(members)))
        for m, metric in enumerate(metrics):
            axes[0, 0].plot(xs, [r[metric] for r in members], styles[s % len(styles)], marker="o",
                            color=colors[m % len(colors)], label=f"{metric}" + (f" ({label})" if label else ""))
        if gap:
            axes[0, 1].plot(xs, [r[gap_name(gap)] for r in members], styles[s % len(styles)], marker="o",
                            color=colors[len(metrics) % len(colors)], label=label or gap_name(gap))
        if not numeric:
            for ax in axes[0]:
                ax.set_xticks(xs, [str(r[param]) for r in members])
    axes[0, 0].set_ylabel("metric")
    if gap:
        axes[0, 1].set_ylabel(gap_name(gap))
        axes[0, 1].axhline(0, color="grey", linewidth=0.5)
    for ax in axes[0]:
        ax.set_xlabel(param)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title or f"{', '.join(metrics)} against {param}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


class SweepReport(Callback):
    """Hydra callback: the report of a finished multirun (declare it under hydra.callbacks in a task config)."""

    def __init__(self, param: str, metrics: Sequence[str], gap: Sequence[str] | None = None, at: str = "best",
                 title: str | None = None):
        self.param, self.metrics, self.gap, self.at, self.title = param, list(metrics), gap, at, title

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from . import distributed as dist
        from .progress import console, print_error

        if not dist.is_main():
            return
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            write_report(sweep_dir, self.param, self.metrics, list(self.gap) if self.gap else None, self.at,
                         self.title)
        except UserError as e:
            print_error(f"sweep report: {e}")
            return
        console.print(f"sweep report: {sweep_dir / 'report.md'}, report.csv, report.png")


def _saved_settings(sweep_dir: Path) -> dict[str, Any]:
    """The SweepReport entry of the sweep's saved Hydra config (any job's .hydra/hydra.yaml), if there is one."""
    for job_dir in _job_dirs(sweep_dir):
        path = job_dir / ".hydra" / "hydra.yaml"
        if path.is_file():
            callbacks = OmegaConf.select(OmegaConf.load(path), "hydra.callbacks") or {}
            for node in callbacks.values():
                if str(node.get("_target_", "")).endswith("sweep_report.SweepReport"):
                    return {k: v for k, v in OmegaConf.to_container(node).items() if k != "_target_"}
            return {}
    return {}


def _number(text: str) -> float | None:
    value = _value(text)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def log_axis(values: Sequence[float]) -> bool:
    """Whether values are better read on a log axis: all positive, spanning a decade or more (learning rates)."""
    return bool(values) and min(values) > 0 and max(values) / min(values) >= 10


def plot_params(rows: list[dict[str, Any]], monitor: str, path: Path) -> dict[str, str]:
    """The best monitored metric of each job against each swept parameter, one panel per parameter; returns each
    parameter's axis: log, linear or category."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .sweep import _key, varying

    keys = [k for k in varying(rows)[0] if k not in ("resume",) and not k.startswith("hydra.")] if len(rows) > 1 \
        else []
    if not keys:
        return {}
    cols = min(len(keys), 3)
    fig, axes = plt.subplots((len(keys) + cols - 1) // cols, cols, figsize=(4.2 * cols, 3.4 * ((len(keys) + 2) // 3)),
                             squeeze=False)
    scales = {}
    for ax, key in zip(axes.flat, keys):
        points = []
        for r in rows:
            value = {_key(o): o.partition("=")[2] for o in r["overrides"]}.get(key)
            y = r.get(monitor)
            if value is not None and isinstance(y, (int, float)) and math.isfinite(y):
                points.append((value, y))
        numbers = [_number(v) for v, _ in points]
        if points and all(n is not None for n in numbers):
            scales[key] = "log" if log_axis(numbers) else "linear"
            ax.scatter(numbers, [y for _, y in points])
            ax.set_xscale(scales[key])
            if scales[key] == "log":
                ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        else:
            scales[key] = "category"
            labels = list(dict.fromkeys(v for v, _ in points))
            ax.scatter([labels.index(v) for v, _ in points], [y for _, y in points])
            ax.set_xticks(range(len(labels)), labels, rotation=30 if max(map(len, labels), default=0) > 6 else 0)
        ax.set_xlabel(key)
        ax.set_ylabel(f"best {monitor}")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.suptitle(f"best {monitor} against each swept parameter ({len(rows)} jobs)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return scales


def plot_curves(rows: list[dict[str, Any]], monitor: str, path: Path) -> int:
    """Every job's learning curves overlaid: training loss and the monitored metric against the global step (a
    staged job's stages one after the other). Returns how many jobs had curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .sweep import _key, _short_value, abbreviations, varying

    keys = varying(rows)[0] if len(rows) > 1 else []
    names = abbreviations(keys)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    drawn = 0
    for r in rows:
        path_csv = Path(r["dir"]) / "metrics.csv"
        if not path_csv.is_file():
            continue
        with open(path_csv, newline="") as f:
            logged = list(csv.DictReader(f))
        shown = [o for o in r["overrides"] if _key(o) in names]
        label = f"{r['job']}: " + " ".join(f"{names[_key(o)]}={_short_value(o.partition('=')[2])}" for o in shown)
        for ax, metric in zip(axes, ("train/loss", monitor)):
            points = [(float(x["global_step"]), float(x[metric])) for x in logged if x.get(metric) not in (None, "")]
            if points:
                ax.plot(*zip(*points), marker="." if metric == monitor else None, linewidth=1, label=label)
        drawn += 1
    for ax, metric in zip(axes, ("train/loss", monitor)):
        ax.set_xlabel("step")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        if 0 < drawn <= 12:
            ax.legend(fontsize=7)
    fig.suptitle(f"learning curves of {drawn} jobs")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return drawn


def main(argv: list[str] | None = None) -> None:
    from .sweep import WIDTH, write_summary

    parser = argparse.ArgumentParser(prog="python -m trainer.sweep_report",
                                     description="A sweep's table (summary.csv), params.png, curves.png, and metrics "
                                                 "against a swept parameter (report.csv/.md/.png)")
    parser.add_argument("sweep_dir", type=Path, help="a multirun folder (outputs/multirun/<stamp>)")
    parser.add_argument("--param", help="the swept override on the x axis, e.g. model.p")
    parser.add_argument("--metrics", nargs="+", help="metric columns, e.g. train_eval/acc val/acc")
    parser.add_argument("--gap", nargs=2, metavar=("A", "B"), help="add the column A - B")
    parser.add_argument("--at", choices=("best", "last"), help="which validation of each job (default best)")
    parser.add_argument("--title")
    parser.add_argument("--per-class", action="store_true", help="keep per-class metrics in the table")
    parser.add_argument("--width", type=int, help=f"the table's width in columns (default {WIDTH}, or the "
                                                   "terminal's when narrower)")
    args = parser.parse_args(argv)
    try:
        if not args.sweep_dir.is_dir():
            raise UserError(f"sweep folder not found: {args.sweep_dir}")
        if not _job_dirs(args.sweep_dir):
            raise UserError(f"{args.sweep_dir} holds no job folders (0/, 1/, ...); give a multirun folder")
        settings = _saved_settings(args.sweep_dir) or _inferred_settings(args.sweep_dir)
        for key in ("param", "metrics", "gap", "at", "title"):
            if getattr(args, key) is not None:
                settings[key] = getattr(args, key)
        against = bool(settings.get("param") and settings.get("metrics"))
        if against:  # a bad --param or --at is one line, before anything is written
            collect(args.sweep_dir, settings["param"], settings["metrics"], settings.get("gap"),
                    settings.get("at", "best"))
        rows = write_summary(args.sweep_dir, per_class=args.per_class, width=args.width)
        monitor = next((c.removeprefix("final ") for r in rows for c in r if c.startswith("final ")), None)
        written = [args.sweep_dir / "summary.csv"]
        if monitor:
            if plot_params(rows, monitor, args.sweep_dir / "params.png"):
                written.append(args.sweep_dir / "params.png")
            if plot_curves(rows, monitor, args.sweep_dir / "curves.png"):
                written.append(args.sweep_dir / "curves.png")
        if against:
            report = write_report(args.sweep_dir, settings["param"], settings["metrics"], settings.get("gap"),
                                  settings.get("at", "best"), settings.get("title"))
            print((args.sweep_dir / "report.md").read_text(), end="")
            written += [args.sweep_dir / f"report.{ext}" for ext in ("csv", "md", "png")]
            print(f"({len(report)} jobs)")
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print("written: " + ", ".join(str(p) for p in written))


if __name__ == "__main__":
    main()
