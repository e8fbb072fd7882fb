"""The console: a rich progress bar that redraws a few times a second at most, and the end-of-run summary table.

The loop calls `ProgressBar.update` every step; it only reads the clock there. The smoothed loss is a tensor the
loop keeps on the device, and it is read (one host sync) only when the bar actually redraws.
"""
from __future__ import annotations

import time

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

# markup=False: what we print is data (paths, overrides such as noise_shape=[null,1], errors that name their source
# as [/.../pair.cc:545]), and rich would read its '[...]' as style tags, dropping text or raising MarkupError.
console = Console(stderr=True, markup=False)
if not console.is_terminal:  # logs and CI: long lines rather than wrapped at 80 columns
    console = Console(stderr=True, width=200, markup=False)


class ProgressBar:
    """One bar per epoch. Disabled (no-op) when the console is not a terminal; the log lines cover that case."""

    def __init__(self, enabled: bool = True, refresh_s: float = 0.5):
        self.enabled = enabled and console.is_terminal
        self.refresh_s = refresh_s
        self._progress: Progress | None = None
        self._task = None
        self._last = 0.0
        self._t0 = 0.0
        self._samples = 0
        self._updates = 0

    def start_epoch(self, description: str, total: int) -> None:
        if not self.enabled:
            return
        if self._progress is None:
            self._progress = Progress(
                TextColumn("{task.description}", style="bold", markup=False),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]:>7} samples/s"),
                TextColumn("loss {task.fields[loss]}"),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                console=console,
                auto_refresh=False,
                transient=False,
            )
            self._progress.start()
        self._task = self._progress.add_task(description, total=total, rate="-", loss="-")
        self._t0 = self._last = time.monotonic()
        self._samples = 0

    def update(self, completed: int, samples: int, loss: torch.Tensor) -> None:
        if not self.enabled:
            return
        self._samples += samples
        self._updates += 1
        now = time.monotonic()
        if now - self._last < self.refresh_s:
            return
        self._last = now
        rate = self._samples / max(now - self._t0, 1e-9)
        self._progress.update(self._task, completed=completed, rate=f"{rate:,.0f}", loss=f"{self._debiased(loss):.4f}")
        self._progress.refresh()

    def _debiased(self, ema: torch.Tensor) -> float:
        """The loop's EMA starts at 0 (no first-step branch in the hot loop); correct for that as Adam does."""
        return float(ema) / (1 - 0.98 ** self._updates)

    def end_epoch(self, completed: int) -> None:
        if self.enabled and self._task is not None:
            self._progress.update(self._task, completed=completed)
            self._progress.refresh()

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def summary_table(title: str, rows: dict[str, object]) -> None:
    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in rows.items():
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    console.print(table)


def print_error(message: str) -> None:
    """One `error: MESSAGE` line on the console, the prefix in bold red."""
    console.print(Text.assemble(("error:", "bold red"), f" {message}"), highlight=False, soft_wrap=True)


def log_handler():
    """The console log handler, used by conf/hydra: rich on a terminal (sharing the progress bar's console); plain
    lines on stderr when it is a pipe or a file, which rich would pad to its width and wrap, breaking `grep`."""
    import logging
    import sys

    if not console.is_terminal:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", datefmt="%H:%M:%S"))
        return handler
    from rich.logging import RichHandler

    return RichHandler(console=console, show_path=False, markup=False, rich_tracebacks=False, log_time_format="%X")
