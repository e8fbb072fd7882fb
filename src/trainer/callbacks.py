"""Small stateful helpers the loop calls explicitly (there is no hidden callback dispatch)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from .errors import NonFiniteLossError


class MonitorTracker:
    """Tracks the best value of the monitored metric; drives best-checkpointing and early stopping."""

    def __init__(self, monitor: str, mode: str, patience: int | None = None, min_delta: float = 0.0):
        self.monitor, self.mode, self.patience, self.min_delta = monitor, mode, patience, min_delta
        self.best: float | None = None
        self.best_epoch: int | None = None  # where the best was seen (1-based epoch, optimizer steps of the stage)
        self.best_step: int | None = None
        self.bad_validations = 0

    def update(self, metrics: dict[str, float], epoch: int | None = None, step: int | None = None) -> bool:
        """Record one validation (after `epoch`, at `step`); True when it is a new best."""
        if self.monitor not in metrics:
            from .errors import UserError

            raise UserError(
                f"monitored metric '{self.monitor}' is not among the logged metrics "
                f"({', '.join(sorted(metrics))}); set trainer.monitor to one of them"
            )
        value = metrics[self.monitor]
        if not math.isfinite(value):
            improved = False
        elif self.best is None:
            improved = True
        elif self.mode == "max":
            improved = value > self.best + self.min_delta
        else:
            improved = value < self.best - self.min_delta
        if improved:
            self.best, self.best_epoch, self.best_step, self.bad_validations = value, epoch, step, 0
        else:
            self.bad_validations += 1
        return improved

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.bad_validations >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "bad_validations": self.bad_validations, "monitor": self.monitor,
                "best_epoch": self.best_epoch, "best_step": self.best_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.bad_validations = state["best"], state["bad_validations"]
        self.best_epoch, self.best_step = state.get("best_epoch"), state.get("best_step")  # (older last.pt: none)


class NonFiniteGuard:
    """Notices a NaN/inf loss, or a diverging one, without a host sync per step: flags on the device, read only at
    check points.

    Divergence: the loss's moving average growing past `divergence_factor` times the lowest it has been (at least
    `floor`): Adam at lr=1e8 reaches a finite 1e18 and would otherwise end "ok"."""

    def __init__(self, device: torch.device, precision: str = "fp32", divergence_factor: float | None = 100.0,
                 floor: float = 0.1):
        self.flag = torch.zeros((), dtype=torch.bool, device=device)
        self.diverged = torch.zeros((), dtype=torch.bool, device=device)
        self.smoothed = torch.zeros((), device=device)
        self.lowest = torch.zeros((), device=device)
        self.factor, self.floor, self.seen = divergence_factor, floor, 0
        self.last_checked_step = 0
        self.precision = precision

    def observe(self, loss: torch.Tensor) -> None:
        loss = loss.detach().float()
        self.flag |= ~torch.isfinite(loss)
        if self.factor is None:
            return
        self.seen += 1
        if self.seen == 1:
            self.smoothed.copy_(loss)
            self.lowest.copy_(loss)
        else:
            self.smoothed.lerp_(loss, 0.1)
            torch.minimum(self.lowest, self.smoothed, out=self.lowest)
            self.diverged |= self.smoothed > self.factor * self.lowest.clamp(min=self.floor)

    def check(self, step: int, last_good: str, weights: dict[str, torch.Tensor] | None = None) -> None:
        """Raise if any loss since the previous check was not finite or diverged, or (given a state_dict about to be
        saved) any weight or buffer is not finite: a loss can stay finite while batch-norm statistics overflow. Call
        before writing."""
        from .distributed import all_reduce_sum

        bad = torch.stack([self.flag, torch.zeros_like(self.flag), self.diverged])
        if weights is not None:
            floats = [t for t in weights.values() if t.is_floating_point()]
            bad[1] = ~torch.stack([torch.isfinite(t).all() for t in floats]).all() if floats else False
        loss_bad, weights_bad, diverged = (all_reduce_sum(bad.float()) > 0).tolist()  # every rank stops together
        if loss_bad or weights_bad or diverged:
            when = f"between steps {self.last_checked_step} and {step}" if loss_bad or diverged else f"at step {step}"
            if diverged and not loss_bad:
                what = (f"training loss diverged (its moving average {float(self.smoothed):.3g} grew past "
                        f"{self.factor:g}x its lowest, {float(self.lowest):.3g}; trainer.divergence_factor)")
            else:
                what = "training loss became NaN/inf" if loss_bad else "weights (e.g. batch-norm statistics) became NaN/inf"
            kept = f"last good checkpoint: {last_good}" if last_good and Path(last_good).is_file() else \
                "no checkpoint had been written yet"
            fixes = ["lower optim.lr", "set trainer.gradient_clip_val"]
            if self.precision != "fp32":
                fixes.append("use trainer.precision=fp32")
            raise NonFiniteLossError(f"the {what} {when}; stopped, {kept}. "
                                     f"{', '.join(fixes[:-1]).capitalize()} or {fixes[-1]}",
                                     last_good=last_good if last_good and Path(last_good).is_file() else None)
        self.last_checked_step = step


class GracefulInterrupt:
    """Ctrl-C (SIGINT) or SIGTERM while training: the loop finishes its optimizer step, writes last.pt and stops,
    so `resume=RUN_DIR` continues from that very step, as Lightning's SLURM integration checkpoints on its requeue
    signal. A second signal of the same kind, or one outside the training steps (data set-up, the final test),
    interrupts at once.

    Under torchrun the signals reach the ranks at different steps (the terminal's SIGINT, then torchrun's SIGTERM to
    each worker, which is not a second Ctrl-C), so the loop asks `agreed()`, a max over the ranks at every step:
    all ranks stop after the same step. Used as a context manager around training; it installs its handlers only in
    the main thread."""

    def __init__(self, enabled: bool = True):
        import threading

        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.requested = False
        self.armed = False  # set by the loop while it trains
        self._first: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if not self.armed or self._first == signum:  # outside the steps there is nothing to finish; or insisted
            raise KeyboardInterrupt
        self.requested, self._first = True, self._first or signum

    def agreed(self) -> bool:
        """Whether any rank was asked to stop (the same answer on every rank: call it at the same step on all)."""
        from .distributed import any_rank

        return any_rank(self.requested)

    def __enter__(self) -> "GracefulInterrupt":
        import signal

        if self.enabled:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        import signal

        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
