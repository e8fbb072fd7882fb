"""The generic training loop: one stage of fitting a model with a task head on a DataModule.

It never knows the problem. The DataModule yields batches (dicts of tensors), the model maps batch["x"] to outputs,
and the head turns outputs into a loss, metrics and predictions. What the loop steps (optimizer, schedule, scaler,
weight average, DDP) is set up in `state.py`, and what it trains on (loaders, step plan) in `stages.py`; `fit` is the
loop itself: steps, budgets, validation, checkpoints and early stopping.
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from . import checkpoint as ckpt
from . import distributed as dist
from .callbacks import GracefulInterrupt
from .inference import autocast_context, batch_size_of, score, to_device
from .progress import CONSOLE_SKIP, FIRST_LOG_S, LOG_EVERY_S, ProgressBar, duration
from .schedules import seek
from .stages import Stage, plan_steps
from .state import Counters, TrainState, setup_training

log = logging.getLogger("trainer")


@dataclass
class FitResult:
    counters: Counters
    monitor: str
    best: float | None
    stop_reason: str
    best_epoch: int | None = None
    best_step: int | None = None


def train_stage(stage: Stage, device: torch.device, resume: dict[str, Any] | None, counters: Counters,
                interrupt: GracefulInterrupt | None = None) -> FitResult:
    """Plan the stage (unless `build_stage` did), set up its training state (restored from `resume`), and fit it."""
    if stage.plan is None:
        plan_steps(stage, counters)
    return fit(stage, setup_training(stage, device, counters, resume), device, interrupt)


def fit(stage: Stage, state: TrainState, device: torch.device, interrupt: GracefulInterrupt | None = None) -> FitResult:
    """Train one stage until a budget is spent or early stopping triggers; keep best.pt and last.pt.

    With `interrupt`, a Ctrl-C or SIGTERM ends the current step, writes last.pt and raises KeyboardInterrupt."""
    tcfg, plan, counters = stage.tcfg, stage.plan, state.counters
    world = dist.world_size()
    progress = ProgressBar(enabled=tcfg.progress and stage.run_dir is not None, refresh_s=tcfg.progress_refresh_s)
    autocast = autocast_context(device, tcfg.precision)
    stats = IntervalStats(device)
    t_start = time.monotonic() - counters.train_seconds
    elapsed = counters.train_seconds  # the stage's time as rank 0 counts it, refreshed after every step
    last_val_step, stop_reason = -1, None
    remaining = _time_left(stage, counters, t_start)
    progress.set_run(remaining, "run" if _only_stage(stage) else f"{stage.name} stage")
    # A log line every log_every_n_steps, and one at least every LOG_EVERY_S seconds however long the steps are (a
    # short piped run would otherwise print nothing). The clock must agree across ranks: one process's own, or rank
    # 0's broadcast `elapsed` where max_time sets one; under DDP without max_time only the step count decides.
    timed_logs = world == 1 or plan.max_seconds < math.inf
    next_log_s = counters.train_seconds + FIRST_LOG_S
    if interrupt is not None:
        interrupt.armed = True

    while counters.epoch < plan.max_epochs and stop_reason is None:
        start_epoch(stage, counters)
        progress.start_epoch(f"{stage.name} {counters.epoch + 1}/{plan.max_epochs}", plan.batches_per_epoch)
        for batch in stage.train_loader:
            batch = to_device(batch, device)
            counters.batch_in_epoch += 1
            sync_now = counters.batch_in_epoch % plan.accumulate == 0 or counters.batch_in_epoch == plan.batches_per_epoch
            # DDP: all-reduce gradients only on the micro-batch that completes an accumulation.
            no_sync = state.model.no_sync() if dist.is_distributed() and not sync_now else contextlib.nullcontext()
            with no_sync:
                with autocast:
                    _, loss = state.model(batch)
                state.scaler.scale(loss / plan.accumulate if plan.accumulate > 1 else loss).backward()
            state.guard.observe(loss)
            stats.add(loss.detach().float(), batch_size_of(batch) * world)
            progress.update(counters.batch_in_epoch, batch_size_of(batch) * world, stats.smoothed)
            if not sync_now:
                continue

            lr = optimizer_step(state, tcfg.gradient_clip_val, plan, elapsed)
            now_s = (time.monotonic() - t_start if world == 1 else elapsed) if timed_logs else -math.inf
            if counters.step % tcfg.log_every_n_steps == 0 or now_s >= next_log_s:
                next_log_s = now_s + LOG_EVERY_S
                state.guard.check(counters.step, last_good(stage))
                log_train(stage, counters, stats, lr, quiet=progress.enabled, eta=remaining())
            if tcfg.val_every_n_steps and counters.step % tcfg.val_every_n_steps == 0 and stage.val_loader is not None:
                if validate(stage, state, counters.epoch + 1):
                    stop_reason = "early stopping"
                last_val_step = counters.step
                train_mode(stage)
            if plan.max_seconds < math.inf:  # rank 0's clock decides for every rank (see rank0_value)
                elapsed = dist.rank0_value(time.monotonic() - t_start)
            if plan.max_steps > 0 and counters.step >= plan.max_steps:
                stop_reason = stop_reason or f"max_steps={plan.max_steps}"
            elif elapsed >= plan.max_seconds:
                stop_reason = stop_reason or f"max_time={tcfg.max_time}"
            if stop_reason:  # (an interrupt now: the stage ends as planned, then the run stops)
                break
            interrupted = interrupt is not None and interrupt.agreed()  # Ctrl-C or SIGTERM: resumable from here
            if interrupted or (tcfg.checkpoint_every_n_steps and counters.step % tcfg.checkpoint_every_n_steps == 0):
                counters.train_seconds = time.monotonic() - t_start
                save_last(stage, state)
            if interrupted:
                dist.barrier()  # every rank waits for rank 0's last.pt before any exits (torchrun would kill it)
                raise KeyboardInterrupt

        # -- end of an epoch, or of the budget --
        progress.end_epoch(counters.batch_in_epoch)
        epoch = counters.epoch + 1  # the epoch just trained, as reported
        if counters.batch_in_epoch >= plan.batches_per_epoch:
            counters.epoch, counters.batch_in_epoch = counters.epoch + 1, 0
        finishing = stop_reason is not None or counters.epoch >= plan.max_epochs
        if tcfg.val_every_n_steps:
            validate_now = finishing and last_val_step != counters.step
        else:
            validate_now = finishing or counters.epoch % tcfg.val_every_n_epochs == 0
        if stage.val_loader is not None and validate_now and validate(stage, state, epoch):
            stop_reason = stop_reason or "early stopping"
        counters.train_seconds = time.monotonic() - t_start
        save_last(stage, state)

    progress.close()
    if interrupt is not None:
        interrupt.armed = False
    if stage.val_loader is None:
        with averaged_weights(state):
            save_weights(stage, state, counters.epoch)  # nothing to select on: the final weights are the best
    counters.stop_reason = stop_reason = stop_reason or f"max_epochs={plan.max_epochs}"
    save_last(stage, state, done=True)
    tracker = state.tracker
    log.info(f"[{stage.name}] finished ({stop_reason}): {counters.step} steps in {counters.train_seconds:.0f}s; "
             + (f"best {tracker.monitor} = {tracker.best:.4g}" if tracker.best is not None
                else "no validation split: best.pt holds the final weights"))
    return FitResult(counters=counters, monitor=tracker.monitor, best=tracker.best, stop_reason=stop_reason,
                     best_epoch=tracker.best_epoch, best_step=tracker.best_step)


# ---- the pieces of a step and of an epoch's end ----------------------------------------------------------------------
class IntervalStats:
    """The training loss summed on the device between log lines (no per-step sync), and its moving average for the
    progress bar (read only when the bar redraws)."""

    def __init__(self, device: torch.device):
        self.smoothed = torch.zeros((), device=device)
        self.loss_sum = torch.zeros((), device=device)
        self.batches, self.samples, self.t0 = 0, 0, time.monotonic()

    def add(self, loss: torch.Tensor, samples: int) -> None:
        self.smoothed.lerp_(loss, 0.02)
        self.loss_sum += loss
        self.batches += 1
        self.samples += samples

    def take(self) -> tuple[float, float]:
        """The mean loss over ranks since the last call, and the samples per second; then start again."""
        now = time.monotonic()
        loss = float(dist.all_reduce_sum(self.loss_sum) / (self.batches * dist.world_size()))
        rate = self.samples / max(now - self.t0, 1e-9)
        self.loss_sum.zero_()
        self.batches, self.samples, self.t0 = 0, 0, now
        return loss, rate


def start_epoch(stage: Stage, counters: Counters) -> None:
    loader = stage.train_loader
    for sampler_or_set in (loader.batch_sampler, loader.dataset):
        if hasattr(sampler_or_set, "set_epoch"):
            sampler_or_set.set_epoch(counters.epoch)
    loader.batch_sampler.set_start(counters.batch_in_epoch)  # a resumed epoch skips what it trained on
    train_mode(stage)


def train_mode(stage: Stage) -> None:
    stage.net.train()
    for m in stage.bn_frozen:  # a frozen backbone keeps its batch-norm statistics
        m.eval()


def optimizer_step(state: TrainState, clip: float | None, plan: Any, elapsed: float) -> float:
    """Clip, step, move the schedule and the weight average; returns the learning rate the step used."""
    if clip:
        state.scaler.unscale_(state.optimizer)
        nn.utils.clip_grad_norm_(state.net.parameters(), clip)
    state.scaler.step(state.optimizer)
    state.scaler.update()
    state.optimizer.zero_grad(set_to_none=True)
    lr = state.optimizer.param_groups[0]["lr"]
    if state.scheduler is not None and plan.schedule_to_time:
        # never behind the step count (so a machine fast enough runs the schedule as planned); OneCycle ends at
        # total_steps. `elapsed` is from the previous step's stop check: one step behind, no extra sync.
        by_time = math.ceil(plan.total_steps * elapsed / plan.max_seconds)
        seek(state.scheduler, min(max(state.scheduler.last_epoch + 1, by_time), plan.total_steps))
    elif state.scheduler is not None:
        state.scheduler.step()
    if state.ema is not None:
        state.ema.update()
    state.counters.step += 1
    state.counters.global_step += 1
    return lr


def log_train(stage: Stage, counters: Counters, stats: IntervalStats, lr: float, quiet: bool,
              eta: float | None = None) -> None:
    """The training loss since the last line: to the loggers, to run.log always, and to the console unless a bar
    shows it (`quiet`)."""
    loss, rate = stats.take()
    log_metrics(stage, counters, {"train/loss": loss, "lr": lr, "samples_per_s": rate}, counters.epoch + 1)
    left = f", {'run' if _only_stage(stage) else 'stage'} eta {duration(eta)}" if eta is not None else ""
    log.info(f"[{stage.name}] epoch {counters.epoch + 1} step {counters.step}: loss={loss:.4f} lr={lr:.3g} "
             f"{rate:,.0f} samples/s; {counters.step:,} of {stage.plan.total_steps:,} steps{left}",
             extra=CONSOLE_SKIP if quiet else None)


def _only_stage(stage: Stage) -> bool:
    """Whether the stage is the whole run (the first stage and the last: it writes best.pt)."""
    return stage.index == 0 and stage.best_path.name == "best.pt"


def _time_left(stage: Stage, counters: Counters, t_start: float):
    """A callable: the stage's time left, validations included, from the step rate since `fit` started in this
    process, or the time budget's end, whichever is sooner. Only the clock and host counters are read."""
    plan, step0, t0 = stage.plan, counters.step, time.monotonic()

    def remaining() -> float:
        now = time.monotonic()
        done = counters.step - step0
        by_steps = (plan.total_steps - counters.step) * (now - t0) / done if done > 0 else math.inf
        return max(min(by_steps, plan.max_seconds - (now - t_start)), 0.0)

    return remaining


def log_metrics(stage: Stage, counters: Counters, metrics: dict[str, float], epoch: int) -> None:
    for logger in stage.loggers:
        logger.log(metrics, stage=stage.name, epoch=epoch, step=counters.step, global_step=counters.global_step)


def averaged_weights(state: TrainState):
    """What validation, best.pt and the test see: the weight average when there is one."""
    return state.ema.swapped_in() if state.ema is not None else contextlib.nullcontext()


def validate(stage: Stage, state: TrainState, epoch: int) -> bool:
    """Score the validation split (and trainer.also_evaluate's), log, keep the best weights; True when early stopping
    says stop."""
    counters, precision = state.counters, stage.tcfg.precision
    state.guard.check(counters.step, last_good(stage))
    device = next(state.net.parameters()).device
    with averaged_weights(state):
        shown = stage.tcfg.progress
        metrics = {f"val/{k}": v for k, v in score(state.net, stage.val_loader, device, precision, "val",
                                                   progress=shown).items()}
        state.net.head.on_validation_end("val", stage.run_dir)
        for split, loader in stage.extra_loaders.items():
            metrics.update({f"{split}/{k}": v
                            for k, v in score(state.net, loader, device, precision, split, progress=shown).items()})
        improved = state.tracker.update(metrics, epoch=epoch, step=counters.step)
        if improved:
            save_weights(stage, state, epoch)
    log_metrics(stage, counters, metrics, epoch)
    log.info(f"[{stage.name}] epoch {epoch} step {counters.step}: "
             + "  ".join(f"{k}={v:.4f}" for k, v in metrics.items()) + ("  (best)" if improved else ""))
    return state.tracker.should_stop


def last_good(stage: Stage) -> str:
    return str(stage.last_path) if stage.last_path is not None else ""


def save_last(stage: Stage, state: TrainState, done: bool = False) -> None:
    """last.pt: the whole training state, the DataModule's state and the stage's config (rank 0)."""
    payload = state.state_dict()
    state.guard.check(state.counters.step, last_good(stage), payload["net"])
    state.counters.stage_done = payload["counters"]["stage_done"] = done
    if stage.run_dir is not None and stage.tcfg.save_checkpoints:
        ckpt.save_atomic({**payload, "data": stage.data.state_dict(), "config": stage.config_yaml}, stage.last_path)
    for logger in stage.loggers:
        logger.flush()


def save_weights(stage: Stage, state: TrainState, epoch: int) -> None:
    """best.pt: the weights, with what is needed to use them (data state, config) and where they were chosen."""
    if stage.run_dir is not None and stage.tcfg.save_checkpoints:
        ckpt.save_atomic({"net": state.net.state_dict(), "data": stage.data.state_dict(), "config": stage.config_yaml,
                          "monitor": state.tracker.monitor, "best": state.tracker.best, "epoch": epoch,
                          "step": state.counters.step}, stage.best_path)
