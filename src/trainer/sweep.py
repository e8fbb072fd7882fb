"""The end-of-sweep summary: one row per job (its overrides, status, best monitored metric, test metrics)."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf


def collect(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """Read every job folder of a multirun directory: overrides (a list) from .hydra, results from results.json."""
    rows = []
    for job_dir in sorted((p for p in Path(sweep_dir).iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name)):
        overrides_file = job_dir / ".hydra" / "overrides.yaml"
        overrides = [str(o) for o in OmegaConf.load(overrides_file)] if overrides_file.is_file() else []
        results_file = job_dir / "results.json"
        if results_file.is_file():
            result = json.loads(results_file.read_text())
        elif (job_dir / "command.txt").is_file():  # the job started (it writes command.txt first) and was killed
            result = {"status": "failed", "error": "no results.json"}
        else:  # Hydra made its folder, then the sweep was interrupted
            result = {"status": "not run"}
        row: dict[str, Any] = {"job": int(job_dir.name), "overrides": overrides,
                               "status": result.get("status", "?")}
        if result.get("monitor"):
            row[result["monitor"]] = result.get("best")
        row.update(result.get("test", {}))
        if result.get("error"):
            row["error"] = result["error"]
        row["dir"] = str(job_dir)
        rows.append(row)
    return rows


def write_summary(sweep_dir: str | Path) -> list[dict[str, Any]]:
    from rich.table import Table

    from .progress import console

    rows = collect(sweep_dir)
    if not rows:
        return rows
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with open(Path(sweep_dir) / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows({**r, "overrides": " ".join(r["overrides"])} for r in rows)
    # on the console, only the overrides that differ between jobs (summary.csv keeps them all)
    common = set.intersection(*(set(r["overrides"]) for r in rows)) if len(rows) > 1 else set()
    table = Table(title=f"sweep: {sweep_dir}" + (f" ({len(common)} overrides common to every job: see summary.csv)"
                                                 if common else ""), header_style="bold")
    shown = [c for c in columns if c not in ("dir", "error")]
    for c in shown:
        table.add_column(c, justify="right" if c not in ("overrides", "status") else "left")
    for r in rows:
        cells = {**r, "overrides": " ".join(o for o in r["overrides"] if o not in common)}
        table.add_row(*(f"{cells[c]:.4f}" if isinstance(cells.get(c), float) else str(cells.get(c, "")) for c in shown),
                      style="red" if r["status"] != "ok" else None)
    console.print(table)
    console.print(f"summary written to {Path(sweep_dir) / 'summary.csv'}")
    return rows


class SweepSummary(Callback):
    """Hydra callback: print and save the table once every job of a multirun has finished."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from . import distributed as dist

        if dist.is_main():
            write_summary(config.hydra.sweep.dir)
