"""`python -m trainer runs [FOLDER] [--task NAME]`: the runs under outputs/ (or FOLDER), one row each: when, task,
mode, state, the best monitored metric, the test metric of the same name, time, and the folder.

A run's state comes from its records: results.json's status (ok, failed, interrupted); without one, a run whose
folder lock another process holds is running, and one with a last.pt but no record was killed (resumable).
Nothing here writes to a run folder.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any


def find_runs(root: Path) -> list[Path]:
    """Every run folder under `root`: one that Hydra made (`.hydra/`) or that holds a run's records."""
    found = set()
    for marker in ("command.txt", "results.json", ".hydra"):
        for path in root.rglob(marker):
            if ".hydra" not in path.parent.parts:  # not a resume's record inside .hydra/resume-*/
                found.add(path.parent)
    return sorted(found, key=lambda p: (p.name, str(p)))


def _locked(run: Path) -> bool:
    """Whether a process holds the run folder's lock (it is running); the lock is only tested, never kept."""
    lock = run / ".lock"
    if not lock.is_file():
        return False
    import fcntl

    with open(lock) as f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
    return False


def describe(run: Path, root: Path) -> dict[str, Any]:
    """One row: what the run's records say about it."""
    record: dict[str, Any] = {}
    results = run / "results.json"
    if results.is_file():
        try:
            record = json.loads(results.read_text())
        except (OSError, ValueError):
            record = {"status": "unreadable results.json"}
    rel = run.relative_to(root).parts
    mode = record.get("mode") or ("eval" if "eval" in rel else "predict" if "predict" in rel else "train")
    task = record.get("task") or (rel[0] if rel and rel[0] != "multirun" else "?")
    last = (run / "checkpoints" / "last.pt").is_file()
    status = record.get("status")
    if _locked(run):
        state = "running"
    elif status is None:
        state = "killed (resumable)" if last else "no record"
    elif status in ("failed", "interrupted") and last and mode == "train":
        state = f"{status} (resumable)"
    else:
        state = str(status)
    monitor, best = record.get("monitor"), record.get("best")
    row = {"run": run.name, "task": task, "mode": mode, "state": state, "best": "", "test": "", "time": "",
           "folder": str(run)}
    if isinstance(best, (int, float)) and monitor:
        row["best"] = f"{monitor} {best:.4f}"
    tested = record.get("test") or record.get(record.get("split") or "test") or {}
    if isinstance(tested, dict) and tested:
        name = f"test/{monitor.split('/', 1)[-1]}" if monitor else None
        key = name if name in tested else next(iter(tested))
        if isinstance(tested.get(key), (int, float)):
            row["test"] = f"{key} {tested[key]:.4f}"
    seconds = record.get("fit_seconds")
    if isinstance(seconds, (int, float)) and math.isfinite(seconds):
        row["time"] = f"{seconds / 60:.1f} min"
    return row


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer runs", description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", default="outputs", help="where the runs are (default: outputs)")
    parser.add_argument("--task", help="only this task's runs")
    args = parser.parse_args(argv)
    root = Path(args.folder)
    if not root.is_dir():
        print(f"error: {root} is not a folder of runs (give the paths.output_dir of your runs)")
        return 2
    rows = [describe(run, root) for run in find_runs(root)]
    if args.task:
        rows = [r for r in rows if r["task"] == args.task]
    if not rows:
        print(f"no runs under {root}")
        return 0
    from rich.console import Console
    from rich.table import Table

    out = Console(markup=False, highlight=False)
    if not out.is_terminal:
        out = Console(markup=False, highlight=False, width=250)
    table = Table(show_header=True, header_style="bold")
    columns = ["run", "task", "mode", "state", "best", "test", "time", "folder"]
    for column in columns:
        table.add_column(column, no_wrap=column != "folder", overflow="fold")
    for r in rows:
        style = None if r["state"] in ("ok", "running") else "yellow"
        table.add_row(*(r[c] for c in columns), style=style)
    out.print(table)
    return 0
