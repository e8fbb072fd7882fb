"""The console: progress displays that never leave a long piece of work silent, and the end-of-run summary table.

On a terminal every long piece of work (an epoch, a validation, the final test, `mode=eval`, rendering a dataset) is
a rich bar with a count, a rate and an ETA; bars shown at the same time (an epoch's and a validation inside it) share
one live display, since rich allows only one. When stderr is a pipe or a file there are no bars: the same work logs a
plain line now and then instead (`Activity`), and the training loop logs its loss lines (see loop.py).

The loop calls `ProgressBar.update` every step; it only reads the clock there. The smoothed loss is a tensor the
loop keeps on the device, and it is read (one host sync) only when the bar actually redraws.
"""
from __future__ import annotations

import logging
import math
import time
from typing import Any, Callable

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

log = logging.getLogger("trainer")

#: In a pipe, a long piece of work logs its first progress line after this many seconds, then one every LOG_EVERY_S.
FIRST_LOG_S = 10.0
LOG_EVERY_S = 30.0
#: `extra=CONSOLE_SKIP` on a log call: run.log gets the line, the terminal does not (a bar shows the same figures).
CONSOLE_SKIP = {"console": False}


def duration(seconds: float) -> str:
    """H:MM:SS (or M:SS under an hour) for an ETA or an elapsed time; '?' when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def fmt(value: Any) -> str:
    """A number as a message shows it: 4 significant digits for floats (not 0.5406504065040652), thousands
    separators for counts."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) and value != 0 else str(value)
    return str(value)


# ---- the one live display ------------------------------------------------------------------------------------------
class _Live:
    """The rich Progress that every bar on screen belongs to; started with the first bar and stopped with the last."""

    progress: Progress | None = None
    tasks: set = set()

    @classmethod
    def add(cls, description: str, total: int | None, stats: str) -> int:
        if cls.progress is None:
            cls.progress = Progress(
                TextColumn("{task.description}", style="bold", markup=False),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[stats]}", markup=False),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                console=console,
                auto_refresh=False,
                transient=False,
            )
            cls.progress.start()
        task = cls.progress.add_task(description, total=total, stats=stats)
        cls.tasks.add(task)
        return task

    @classmethod
    def remove(cls, task: int, keep: bool = False) -> None:
        """The bar is done: gone from the display (a validation's), or with `keep` left as it ended (an epoch's);
        the display stops when no bar is in progress."""
        if cls.progress is None or task not in cls.tasks:
            return
        cls.tasks.discard(task)
        if not keep:
            cls.progress.remove_task(task)
        if not cls.tasks:
            cls.stop()
        else:
            cls.progress.refresh()

    @classmethod
    def stop(cls) -> None:
        """Stop the display (leaving its last frame), so that what is printed next starts on a line of its own."""
        if cls.progress is not None:
            try:
                cls.progress.refresh()
                cls.progress.stop()
            finally:
                cls.progress, cls.tasks = None, set()


def stop_all() -> None:
    _Live.stop()


def _is_main() -> bool:
    from . import distributed as dist

    return dist.is_main()


class Activity:
    """The progress of one piece of work of known size (rendering, a validation, the test, an eval): a bar in a
    terminal, beside the epoch's when there is one; in a pipe a log line after FIRST_LOG_S and then every LOG_EVERY_S
    seconds (nothing for work shorter than that). `advance` only reads the clock unless it is time to show something.

    `total` counts what `advance` counts (batches, images), `start` of it done before (a cache being continued);
    `unit` names the rate's unit (samples/s, captchas/s)."""

    def __init__(self, description: str, total: int | None, unit: str = "samples", enabled: bool = True,
                 refresh_s: float = 0.5, first_log_s: float = FIRST_LOG_S, log_every_s: float = LOG_EVERY_S,
                 count_name: str = "", start: int = 0):
        self.description, self.total, self.unit, self.count_name = description, total, unit, count_name
        self.enabled = enabled and _is_main()
        self.terminal = self.enabled and console.is_terminal
        self.refresh_s = refresh_s
        self.start = self.done = start
        self.units = 0
        self.t0 = self._last_draw = time.monotonic()
        self._next_log = self.t0 + first_log_s
        self._log_every = log_every_s
        self._task = None
        if self.terminal:
            self._task = _Live.add(description, total, "")
            _Live.progress.update(self._task, completed=start)
            _Live.progress.refresh()

    def __enter__(self) -> "Activity":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def rate(self, now: float | None = None) -> float:
        return self.units / max((now or time.monotonic()) - self.t0, 1e-9)

    def eta(self, now: float | None = None) -> float:
        now = now or time.monotonic()
        if not self.total or self.done <= self.start:
            return math.inf
        return (self.total - self.done) * (now - self.t0) / (self.done - self.start)

    def advance(self, count: int = 1, units: int | None = None) -> None:
        if not self.enabled:
            return
        self.done += count
        self.units += count if units is None else units
        now = time.monotonic()
        if self.terminal:
            if now - self._last_draw >= self.refresh_s:
                self._last_draw = now
                _Live.progress.update(self._task, completed=self.done, stats=f"{self.rate(now):>9,.0f} {self.unit}/s")
                _Live.progress.refresh()
        elif now >= self._next_log:
            self._next_log = now + self._log_every
            of = f"/{self.total:,}" if self.total else ""
            log.info(f"{self.description}: {self.done:,}{of}{self.count_name} in {duration(now - self.t0)}, "
                     f"{self.rate(now):,.0f} {self.unit}/s, eta {duration(self.eta(now))}")

    def close(self) -> None:
        if self._task is not None:
            _Live.remove(self._task)
            self._task = None


class ProgressBar:
    """One bar per epoch, with the rate, the smoothed loss and the time left in the whole stage (`set_run`). Disabled
    (no-op) when the console is not a terminal; the log lines cover that case."""

    def __init__(self, enabled: bool = True, refresh_s: float = 0.5):
        self.enabled = enabled and console.is_terminal
        self.refresh_s = refresh_s
        self._progress: Progress | None = None
        self._task = None
        self._last = 0.0
        self._t0 = 0.0
        self._samples = 0
        self._updates = 0
        self._run_eta: Callable[[], float] | None = None
        self._run_label = "run"

    def set_run(self, remaining_seconds: Callable[[], float], label: str = "run") -> None:
        """What the bar shows as the time left beyond the epoch: a callable read only when the bar redraws."""
        self._run_eta, self._run_label = remaining_seconds, label

    def start_epoch(self, description: str, total: int) -> None:
        if not self.enabled:
            return
        previous, self._task = self._task, _Live.add(description, total, f"{'-':>7} samples/s")
        if previous is not None:  # the finished epoch's bar stays on screen, above the new one
            _Live.remove(previous, keep=True)
        self._progress = _Live.progress
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
        stats = f"{rate:>7,.0f} samples/s  loss {self._debiased(loss):.4f}"
        if self._run_eta is not None:
            stats += f"  {self._run_label} eta {duration(self._run_eta())}"
        self._progress.update(self._task, completed=completed, stats=stats)
        self._progress.refresh()

    def _debiased(self, ema: torch.Tensor) -> float:
        """The loop's EMA starts at 0 (no first-step branch in the hot loop); correct for that as Adam does."""
        return float(ema) / (1 - 0.98 ** self._updates)

    def end_epoch(self, completed: int) -> None:
        if self.enabled and self._task is not None and _Live.progress is not None:
            _Live.progress.update(self._task, completed=completed)
            _Live.progress.refresh()

    def close(self) -> None:
        if self._task is not None:
            _Live.remove(self._task, keep=True)
            self._task = None
        self._progress = None


# ---- one-off console output ----------------------------------------------------------------------------------------
def summary_table(title: str, rows: dict[str, object]) -> None:
    """Metric / value rows under a short title (put long values such as paths in rows: a title wraps at the table's
    width, which broke a checkpoint path mid-word)."""
    table = Table(title=title, show_header=True, header_style="bold", title_justify="left")
    table.add_column("metric", no_wrap=True)
    table.add_column("value", justify="right", overflow="fold")
    for key, value in rows.items():
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    console.print(table)


def print_error(message: str) -> None:
    """One `error: MESSAGE` line on the console, the prefix in bold red."""
    stop_all()
    console.print(Text.assemble(("error:", "bold red"), f" {message}"), highlight=False, soft_wrap=True)


def print_interrupted(message: str) -> None:
    """The one line a Ctrl-C the user asked for ends with: not an error; after any bar, on a line of its own."""
    stop_all()
    console.print(Text.assemble(("interrupted:", "bold yellow"), f" {message}"), highlight=False, soft_wrap=True)


class _ConsoleFilter(logging.Filter):
    """Drops records logged with `extra=CONSOLE_SKIP` (the training-loss lines while a bar shows them)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return getattr(record, "console", True)


def log_handler():
    """The console log handler, used by conf/hydra: rich on a terminal (sharing the progress bar's console); plain
    lines on stderr when it is a pipe or a file, which rich would pad to its width and wrap, breaking `grep`."""
    import sys

    if not console.is_terminal:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", datefmt="%H:%M:%S"))
        return handler
    from rich.logging import RichHandler

    handler = RichHandler(console=console, show_path=False, markup=False, rich_tracebacks=False,
                          log_time_format="%X")
    handler.addFilter(_ConsoleFilter())
    return handler
