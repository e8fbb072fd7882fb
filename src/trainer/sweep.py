"""The sweep's table: one row per job (its overrides, status, best and final monitored metric, test metrics), on the
console at 100 columns and in <sweep>/summary.csv; and the job processes' set-up under a parallel launcher.

A job's row comes from its folder: `.hydra/overrides.yaml` (what it ran), `results.json` (status, best, test) and
`metrics.csv` (the monitored metric at the last validation: "final"). Per-class metrics (`test/acc_<class>` beside
`test/acc`, captcha's `test/acc_pos1`) are left out unless asked for. On the console the overrides common to every
job are left out (summary.csv keeps them all); a table wider than the console abbreviates the override names (the
shortest dotted suffix that tells them apart: `optim.lr` -> `lr`) and then leaves out test columns, saying so.
"""
from __future__ import annotations

import csv
import io
import json
import math
import multiprocessing
import sys
import textwrap
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

WIDTH = 100
#: The rows of the last summary written in this process (main() reads the failures from it).
last_rows: list[dict[str, Any]] = []


def console():
    """The project's console when the CLI runs (it shares the screen with progress bars), else a plain one: the
    report command does not need torch."""
    if "trainer.progress" in sys.modules:
        return sys.modules["trainer.progress"].console
    from rich.console import Console

    plain = Console(stderr=True, markup=False)
    return plain if plain.is_terminal else Console(stderr=True, markup=False, width=200)  # (as progress.console)


def job_dirs(sweep_dir: str | Path) -> list[Path]:
    return sorted((p for p in Path(sweep_dir).iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))


def job_overrides(job_dir: Path) -> list[str]:
    path = job_dir / ".hydra" / "overrides.yaml"
    return [str(o) for o in OmegaConf.load(path)] if path.is_file() else []


def is_per_class(name: str, names: set[str]) -> bool:
    """`split/metric_part` is one class's (or one position's) share of `split/metric`, when that metric exists."""
    head, _, tail = name.rpartition("_")
    return bool(head and tail) and head in names


def final_value(job_dir: Path, monitor: str) -> float | None:
    """The monitored metric at the job's last validation (of its last stage), from metrics.csv."""
    path = job_dir / "metrics.csv"
    if not path.is_file():
        return None
    last = None
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if row.get(monitor) not in (None, ""):
                last = row
    return float(last[monitor]) if last is not None else None


def collect(sweep_dir: str | Path, per_class: bool = False) -> list[dict[str, Any]]:
    """One row per job folder of a multirun directory: job, overrides (a list), status, the best and final monitored
    metric, test metrics, fit time, error, dir."""
    rows = []
    for job_dir in job_dirs(sweep_dir):
        results_file = job_dir / "results.json"
        try:
            result = json.loads(results_file.read_text()) if results_file.is_file() else None
        except ValueError:
            result = {"status": "failed", "error": "results.json is unreadable"}
        if result is None:
            if (job_dir / "command.txt").is_file():  # the job started (it writes command.txt first) and was cut off
                result = {"status": "cut off", "error": "no results.json: resume the sweep"}
            else:  # Hydra made its folder, then the sweep was interrupted
                result = {"status": "not run"}
        row: dict[str, Any] = {"job": int(job_dir.name), "overrides": job_overrides(job_dir),
                               "status": result.get("status", "?")}
        monitor = result.get("monitor")
        if monitor:
            row[monitor] = result.get("best")
            row[f"final {monitor}"] = final_value(job_dir, monitor)
        test = result.get("test") or {}
        names = set(test)
        row.update({k: v for k, v in test.items() if per_class or not is_per_class(k, names)})
        if result.get("fit_seconds") is not None:
            row["fit_s"] = result["fit_seconds"]
        if result.get("error"):
            row["error"] = result["error"]
        row["dir"] = str(job_dir)
        rows.append(row)
    return rows


def _key(override: str) -> str:
    return override.partition("=")[0].lstrip("+~")


def varying(rows: list[dict[str, Any]]) -> tuple[list[str], set[str]]:
    """The override keys whose value differs between jobs (in order of appearance), and the overrides every job
    shares (none for a single job: its overrides are what it is)."""
    if len(rows) < 2:
        return list(dict.fromkeys(_key(o) for r in rows for o in r["overrides"])), set()
    common = set.intersection(*(set(r["overrides"]) for r in rows))
    keys = list(dict.fromkeys(_key(o) for r in rows for o in r["overrides"] if o not in common))
    return keys, common


def abbreviations(keys: list[str], initials: bool = False) -> dict[str, str]:
    """Each dotted key's shortest suffix of whole parts that no other key ends with (`optim.lr` -> `lr`); with
    `initials`, the parts before the last of that suffix cut to their first letter (`unfrozen.optim.lr` -> `u.o.lr`)
    where that still tells the keys apart."""
    out = {}
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            short = ".".join(parts[-n:])
            if not any(k != key and (k == short or k.endswith("." + short)) for k in keys):
                break
        out[key] = short
    if initials:
        cut = {k: ".".join([p[:1] for p in v.split(".")[:-1]] + v.split(".")[-1:]) for k, v in out.items()}
        if len(set(cut.values())) == len(cut):
            out = cut
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.4f}"
    return "" if v is None else str(v)


def _short_value(value: str) -> str:
    """A float override at 4 significant digits (a trial's 0.0031622776601683794 reads 0.003162)."""
    try:
        number = float(value)
    except ValueError:
        return value
    return f"{number:.4g}" if any(c in value for c in ".eE") and len(value) > 8 else value


def table_columns(rows: list[dict[str, Any]]) -> list[str]:
    """Every column, in order: job, overrides, status, metrics (best, final, test), fit_s, error, dir."""
    columns = list(dict.fromkeys(k for r in rows for k in r))
    tail = [c for c in ("fit_s", "error", "dir") if c in columns]
    return [c for c in columns if c not in tail] + tail


def render(rows: list[dict[str, Any]], sweep_dir: str | Path, width: int = WIDTH):
    """The line above the console table, the table (a rich Table) fitted to `width` columns, and the note lines
    printed under it."""
    from rich.console import Console
    from rich.table import Table

    keys, common = varying(rows)
    columns = [c for c in table_columns(rows) if c not in ("dir", "error")]
    monitors = {c.removeprefix("final ") for c in columns if c.startswith("final ")}  # (summary.csv: best as <name>)
    notes = []

    def overrides_cell(r: dict[str, Any], names: dict[str, str]) -> str:
        shown = [o for o in r["overrides"] if o not in common]
        return " ".join(f"{names.get(_key(o), _key(o))}={_short_value(o.partition('=')[2])}" for o in shown)

    heading = f"sweep: {sweep_dir}" + (f" ({len(common)} overrides common to every job: see summary.csv)"
                                       if common else "")

    def build(names: dict[str, str], shown: list[str], wrap: bool = False) -> Table:
        table = Table(header_style="bold")
        for c in shown:
            table.add_column(f"best {c}" if c in monitors else c, no_wrap=not (wrap and c == "overrides"),
                             justify="left" if c in ("overrides", "status") else "right")
        for r in rows:
            cells = {**r, "overrides": overrides_cell(r, names)}
            table.add_row(*(f"{cells[c]:.1f}" if c == "fit_s" and isinstance(cells.get(c), (int, float))
                            else _fmt(cells.get(c)) for c in shown), style="red" if r["status"] != "ok" else None)
        return table

    def fits(table: Table, wrap: bool = False) -> bool:
        measure = Console(width=10_000, markup=False, file=io.StringIO()).measure(table)
        return (measure.minimum if wrap else measure.maximum) <= width

    # 1. the override names as they are, else the shortest suffixes that tell them apart, else with initials
    names: dict[str, str] = {}
    for level in (abbreviations(keys), abbreviations(keys, initials=True)):
        if fits(build(names, columns)):
            break
        names = level
    legend = [f"{short} = {key}" for key, short in names.items() if short != key]
    if legend:
        notes.append("overrides: " + ", ".join(legend))
    # 2. columns left out: fit time first, then test metrics from the last; the test counterpart of the monitored
    # metric (test/acc for val/acc) only when the overrides cannot wrap into what is left
    counterparts = {"test/" + m.split("/", 1)[-1] for m in monitors}
    droppable = [c for c in ("fit_s",) if c in columns]
    droppable += [c for c in reversed(columns) if c.startswith("test/") and c not in counterparts]
    shown, left_out, wrap = columns, [], False
    while not fits(build(names, shown)) and droppable:
        left_out.append(droppable.pop(0))
        shown = [c for c in columns if c not in left_out]
    # 3. the overrides wrapped onto more lines; and last, the counterpart too
    if not fits(build(names, shown)):
        wrap = True
        for c in [c for c in columns if c in counterparts]:
            if fits(build(names, shown, wrap), wrap):
                break
            left_out.append(c)
            shown = [c for c in columns if c not in left_out]
    if left_out:
        notes.append(f"left out at {width} columns: {', '.join(reversed(left_out))} (all in summary.csv)")
    for r in rows:
        if r.get("error"):
            line = f"job {r['job']}: {r['error']}"
            notes.append(line if len(line) <= width else line[:width - 1] + "…")
    notes = [wrapped for note in notes for wrapped in textwrap.wrap(note, width, subsequent_indent="  ",
                                                                    break_on_hyphens=False)]
    return heading, build(names, shown, wrap), notes


def write_summary(sweep_dir: str | Path, per_class: bool = False, width: int | None = None,
                  show: bool = True) -> list[dict[str, Any]]:
    """summary.csv (every column, full names, one column per override key that varies) and the console table."""
    global last_rows
    sweep_dir = Path(sweep_dir)
    rows = collect(sweep_dir, per_class)
    last_rows = rows
    if not rows:
        return rows
    keys, _ = varying(rows)
    base = table_columns(rows)
    head = [c for c in base if c not in ("error", "dir")]
    columns = head + [k for k in keys if k not in head] + [c for c in ("error", "dir") if c in base]
    with open(sweep_dir / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for r in rows:
            values = {_key(o): o.partition("=")[2] for o in r["overrides"]}
            writer.writerow({**{k: values.get(k, "") for k in keys}, **r, "overrides": " ".join(r["overrides"])})
    if show:
        out = console()
        width = width or min(WIDTH, out.width)
        heading, table, notes = render(rows, sweep_dir, width)
        out.print(heading, soft_wrap=True)
        out.print(table, width=width)
        for line in notes:
            out.print(line)
        out.print(f"summary written to {sweep_dir / 'summary.csv'}")
    return rows


def failed_jobs() -> int:
    """Jobs of the last summary that did not finish well (failed, or cut off)."""
    return sum(r["status"] not in ("ok", "not run") for r in last_rows)


class SweepSummary(Callback):
    """Hydra callback: print and save the table once every job of a multirun has finished."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from . import distributed as dist

        if dist.is_main():
            write_summary(config.hydra.sweep.dir)


class JobProcess(Callback):
    """Hydra callback, in the process that runs a job: let the job start processes of its own (DataLoader workers,
    captcha's render pool) where a launcher's worker process forbids it (Hydra #964). joblib's loky workers make
    "loky" the default multiprocessing start method, which torch's DataLoader cannot use ('Process' object has no
    attribute 'env'), and workers of a multiprocessing pool are daemonic, which may not have children at all. The
    platform's default method is restored, and a daemonic worker is marked non-daemonic: the job waits for its
    children itself (a DataLoader's workers also exit when their parent dies)."""

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        methods = multiprocessing.get_all_start_methods()  # the platform's default first
        if multiprocessing.get_start_method(allow_none=True) not in (None, *methods):  # loky's own
            multiprocessing.set_start_method(methods[0], force=True)
        process = multiprocessing.current_process()
        if process.daemon:
            process._config["daemon"] = False  # noqa: SLF001 - the flag multiprocessing checks before a child starts
