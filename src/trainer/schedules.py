"""Learning-rate schedules, built per step once the number of optimizer steps is known.

Configs name them with `_partial_: true`; the loop calls `factory(optimizer, total_steps=N)`. All are closed-form
(the lr is a function of the step number), so `seek` can move one to any step: trainer.schedule_to_max_time does.
"""
from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR


def _warmup(warmup: float, total_steps: int) -> int:
    return int(warmup * total_steps) if warmup < 1 else int(warmup)


def warmup_cosine(optimizer: Optimizer, total_steps: int, warmup: float = 0.0, min_lr_ratio: float = 0.0) -> LRScheduler:
    """Linear warm-up (`warmup` steps, or that fraction of the run when < 1), then cosine decay to min_lr_ratio."""
    warm = _warmup(warmup, total_steps)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = min((step - warm) / max(total_steps - warm, 1), 1.0)
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


def warmup_constant(optimizer: Optimizer, total_steps: int, warmup: float = 0.0) -> LRScheduler:
    warm = _warmup(warmup, total_steps)
    return LambdaLR(optimizer, lambda step: min((step + 1) / warm, 1.0) if warm else 1.0)


def one_cycle(optimizer: Optimizer, total_steps: int, pct_start: float = 0.25, div_factor: float = 25.0,
              final_div_factor: float = 1e4) -> LRScheduler:
    """torch's OneCycleLR peaking at the optimizer's configured lr."""
    max_lr = [g["lr"] for g in optimizer.param_groups]
    total_steps = max(total_steps, 2)
    if math.isclose(pct_start * total_steps, 1.0):  # torch divides step 0 by pct_start * total_steps - 1 (4 steps)
        pct_start = 1.5 / total_steps
    return OneCycleLR(optimizer, max_lr=max_lr, total_steps=total_steps, pct_start=pct_start,
                      div_factor=div_factor, final_div_factor=final_div_factor)


def step_decay(optimizer: Optimizer, total_steps: int, milestones: tuple[float, ...] = (0.5, 0.75),
               gamma: float = 0.1) -> LRScheduler:
    """Multiply the lr by gamma at each milestone (fractions of the run when < 1, else step numbers)."""
    marks = sorted(_warmup(m, total_steps) for m in milestones)
    return LambdaLR(optimizer, lambda step: gamma ** sum(step >= m for m in marks))


CLOSED_FORM = (LambdaLR, OneCycleLR)


def seek(scheduler: LRScheduler, step: int) -> None:
    """Set a closed-form schedule to where it would be after `step` steps."""
    if not isinstance(scheduler, CLOSED_FORM):
        raise TypeError(f"{type(scheduler).__name__} is not a closed-form schedule; use one of trainer.schedules")
    scheduler.last_epoch = step - 1
    scheduler.step()
