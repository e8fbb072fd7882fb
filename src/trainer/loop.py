"""The generic training loop: one stage of fitting a model with a task head on a DataModule.

It never knows the problem. The DataModule yields batches (dicts of tensors), the model maps batch["x"] to outputs,
and the head turns outputs into a loss, metrics and predictions. Everything else here is the machinery every
problem shares: device and precision, accumulation, clipping, budgets, validation, checkpoints, early stopping,
resume and DistributedDataParallel.
"""
from __future__ import annotations

import contextlib
import logging
import math
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch
from omegaconf import DictConfig
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from . import checkpoint as ckpt
from . import distributed as dist
from .callbacks import GracefulInterrupt, MonitorTracker, NonFiniteGuard
from .config import TrainerConfig, parse_duration
from .ema import WeightEMA
from .errors import UserError
from .progress import ProgressBar
from .schedules import CLOSED_FORM, seek

log = logging.getLogger("trainer")


class TaskNet(nn.Module):
    """Model and head as one module, so DDP also synchronises the head's parameters (e.g. center-loss centres)."""

    def __init__(self, model: nn.Module, head: nn.Module):
        super().__init__()
        self.model, self.head = model, head

    def forward(self, batch: dict[str, Any]) -> tuple[Any, torch.Tensor]:
        outputs = self.model(batch["x"])
        return outputs, self.head.loss(outputs, batch)


@dataclass
class Counters:
    """Where a stage is; saved in last.pt so that a resumed run continues exactly here."""

    stage_index: int = 0
    stage_done: bool = False
    epoch: int = 0  # the epoch in progress (0-based)
    batch_in_epoch: int = 0  # batches of that epoch already trained on
    step: int = 0  # optimizer steps in this stage
    global_step: int = 0  # optimizer steps over all stages of the run
    train_seconds: float = 0.0  # time spent training this stage, over all resumes (for max_time)
    earlier_stages_seconds: float = 0.0  # ... and the run's finished stages (results.json's fit_seconds)
    stop_reason: str | None = None  # why the stage ended, once it has
    total_steps: int | None = None  # the plan the schedule is laid out over; a resume must keep it


@dataclass
class FitResult:
    counters: Counters
    monitor: str
    best: float | None
    stop_reason: str
    best_epoch: int | None = None
    best_step: int | None = None


@dataclass
class Stage:
    """Everything a stage needs, built from its config by `trainer.run`."""

    name: str
    index: int
    cfg: DictConfig  # the stage's config
    config_yaml: str  # ... resolved, as saved with every checkpoint
    tcfg: TrainerConfig
    data: Any  # trainer.datasets.base.DataModule
    net: TaskNet
    optimizer_factory: Any  # partial(params) -> Optimizer
    scheduler_factory: Any | None  # partial(optimizer, total_steps) -> LRScheduler
    run_dir: Path | None  # None on ranks > 0
    best_path: Path
    config_path: Path | None = None  # a resumed stage: where `fit` writes config_yaml once its checks pass
    loggers: list = field(default_factory=list)
    bn_frozen: list[nn.Module] = field(default_factory=list)


def select_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", dist.env_local_rank())
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"trainer.device={name} but CUDA is not available here; use trainer.device=auto or cpu")
    return device


def autocast_context(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def apply_freeze(net: nn.Module, trainable: Iterable[str] | None, frozen: Iterable[str] | None) -> list[nn.Module]:
    """Set requires_grad from regexes on parameter names ("model.backbone.layer4..."); return the frozen norms.

    `trainable` given: only matching parameters train. `frozen`: matching parameters do not. Batch-norm layers whose
    parameters are all frozen are kept in eval mode, so a frozen backbone's statistics stay as they were.
    """
    trainable = [re.compile(p) for p in trainable or []]
    frozen = [re.compile(p) for p in frozen or []]
    for name, p in net.named_parameters():
        train = any(r.search(name) for r in trainable) if trainable else True
        p.requires_grad_(train and not any(r.search(name) for r in frozen))
    if not any(p.requires_grad for p in net.parameters()):
        raise UserError("no parameter is trainable in this stage; check the stage's trainable/frozen patterns")
    norms = (nn.modules.batchnorm._BatchNorm,)
    return [m for m in net.modules() if isinstance(m, norms) and not any(p.requires_grad for p in m.parameters())]


def param_groups(net: nn.Module, weight_decay: float | None) -> list[dict[str, Any]]:
    """nanoGPT's split: weight decay on matrices and kernels, none on biases, norms and embeddings' 1-d params."""
    params = [p for p in net.parameters() if p.requires_grad]
    if not weight_decay:
        return [{"params": params}]
    return [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    non_blocking = device.type == "cuda"
    return {k: v.to(device, non_blocking=non_blocking) if torch.is_tensor(v) else v for k, v in batch.items()}


def batch_size_of(batch: dict[str, Any]) -> int:
    return len(batch["x"])


@torch.inference_mode()
def evaluate(net: TaskNet, loader, device: torch.device, precision: str, limit: int | None = None,
             split: str | None = None) -> dict[str, float]:
    """One pass over `loader` in eval mode (the net is left in eval mode); the head's metrics, reduced over ranks.

    `split` ("val", "test", ...) is told to the head (`head.split`), for heads whose metrics depend on it (a decode
    setting tuned on validation and only applied elsewhere)."""
    head = net.head
    net.eval()
    head.reset()
    head.split = split
    for i, batch in enumerate(loader):
        if limit is not None and i >= limit:
            break
        if batch_size_of(batch) == 0:  # this rank's slice of a final batch smaller than the world size
            continue
        batch = to_device(batch, device)
        with autocast_context(device, precision):
            outputs = net.model(batch["x"])
        head.update(outputs, batch)
    return head.compute()


def fit(stage: Stage, device: torch.device, resume: dict[str, Any] | None, counters: Counters,
        interrupt: GracefulInterrupt | None = None) -> FitResult:
    """Train one stage until a budget is spent or early stopping triggers; keep best.pt and last.pt.

    With `interrupt`, a Ctrl-C or SIGTERM ends the current step, writes last.pt and raises KeyboardInterrupt."""
    tcfg, data, net = stage.tcfg, stage.data, stage.net
    main = stage.run_dir is not None
    ckpt_dir = stage.run_dir / "checkpoints" if main else None
    last_path = ckpt_dir / "last.pt" if main else None

    # ---- data ----------------------------------------------------------------------------------------------------
    rank, world = dist.rank(), dist.world_size()
    if tcfg.fast_dev_run:
        train_limit, val_limit = 1, 1
    elif tcfg.overfit_batches:
        train_limit = val_limit = tcfg.overfit_batches
    else:
        train_limit, val_limit = tcfg.limit_train_batches, tcfg.limit_val_batches
    if data.batch_size % world:
        raise UserError(f"dataset.batch_size={data.batch_size} is the global batch; it must divide by {world} ranks")
    train_loader = data.loader("train", train=not tcfg.overfit_batches, rank=rank, world_size=world, limit=train_limit)
    val_split = "train" if tcfg.overfit_batches else "val"
    val_loader = (
        data.loader(val_split, rank=rank, world_size=world, limit=val_limit) if data.has_split(val_split) else None
    )
    for split in tcfg.also_evaluate:
        if not data.has_split(split):
            raise UserError(f"trainer.also_evaluate: split '{split}' does not exist; the dataset has: "
                            f"{', '.join(data.splits)}")
    extra_loaders = {s: data.loader(s, rank=rank, world_size=world, limit=val_limit) for s in tcfg.also_evaluate}
    batches_per_epoch = len(train_loader.batch_sampler)
    if batches_per_epoch == 0:
        raise UserError("the training split yields no full batch; lower dataset.batch_size or add data")
    steps_per_epoch = math.ceil(batches_per_epoch / tcfg.accumulate_grad_batches)
    max_epochs = 1 if tcfg.fast_dev_run else tcfg.max_epochs
    max_steps = 1 if tcfg.fast_dev_run else tcfg.max_steps
    total_steps = steps_per_epoch * max_epochs if max_steps < 0 else min(max_steps, steps_per_epoch * max_epochs)
    if counters.total_steps not in (None, total_steps) and stage.scheduler_factory is not None:
        # resuming a stage whose budget or data has changed: its lr schedule is laid out over the old step count
        raise UserError(f"resume: stage '{stage.name}' was planned for {counters.total_steps} steps and its config now "
                        f"gives {total_steps} (trainer.max_epochs, max_steps or the data changed); its learning-rate "
                        "schedule is laid out over the plan: drop the change, or start a new run")
    counters.total_steps = total_steps
    max_seconds = parse_duration(tcfg.max_time) if tcfg.max_time else math.inf
    fit_schedule_to_time = tcfg.schedule_to_max_time and max_seconds < math.inf  # nothing to fit to without it

    # ---- optimisation --------------------------------------------------------------------------------------------
    net.to(device)
    if resume is None and getattr(net.model, "needs_data_init", False):  # e.g. a whitening first layer
        # the same first training images on every rank, whatever the number of processes
        first = next(iter(data.loader("train", rank=0, world_size=1, limit=1)))
        net.model.init_from_data(to_device(first, device)["x"])
    try:
        optimizer = stage.optimizer_factory(param_groups(net, stage.optimizer_factory.keywords.get("weight_decay")))
        scheduler = stage.scheduler_factory(optimizer, total_steps=total_steps) if stage.scheduler_factory else None
    except (ValueError, TypeError) as e:
        raise UserError(f"cannot build the optimizer or schedule: {e}; check the optim.* and sched.* config") from None
    if fit_schedule_to_time and scheduler is not None and not isinstance(scheduler, CLOSED_FORM):
        raise UserError(f"trainer.schedule_to_max_time moves the schedule by time, which {type(scheduler).__name__} "
                        "cannot do; use one of trainer.schedules (sched=onecycle, cosine, step, none)")
    use_scaler = tcfg.precision == "fp16"
    if use_scaler and device.type != "cuda":
        raise UserError("trainer.precision=fp16 needs CUDA (it uses a GradScaler); use bf16 or fp32 on CPU")
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
    monitor = tcfg.monitor or f"val/{net.head.monitor}"
    tracker = MonitorTracker(monitor, tcfg.monitor_mode or net.head.monitor_mode,
                             tcfg.early_stopping_patience, tcfg.early_stopping_min_delta)
    guard = NonFiniteGuard(device, tcfg.precision)

    if resume is not None:  # continue exactly where last.pt left off
        net.load_state_dict(resume["net"])
        optimizer.load_state_dict(resume["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(resume["scheduler"])
        scaler.load_state_dict(resume["scaler"])
        tracker.load_state_dict(resume["tracker"])
        ckpt.set_rng_state(resume["rng"])
        log.info(f"resumed stage '{stage.name}' at epoch {counters.epoch + 1}, step {counters.step}")
    guard.last_checked_step = counters.step
    if main and stage.config_path is not None:  # after the checks: a refused resume leaves the run's config as it was
        stage.config_path.write_text(stage.config_yaml)

    model = net
    if dist.is_distributed():
        model = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    if tcfg.compile:
        model = torch.compile(model)

    ema = WeightEMA(net, tcfg.ema_decay) if tcfg.ema_decay else None  # after DDP has given every rank rank 0's weights
    if ema is not None and resume is not None:
        if resume.get("ema") is None:
            log.warning(f"[{stage.name}] last.pt holds no weight average: it starts again from the resumed weights")
        else:
            ema.load_state_dict(resume["ema"])
    averaged_weights = ema.swapped_in if ema is not None else contextlib.nullcontext  # what val, best.pt, test see

    def save_last(done: bool = False) -> None:
        weights = net.state_dict()
        guard.check(counters.step, str(last_path) if main else "", weights)
        counters.stage_done = done
        if main and not tcfg.fast_dev_run:
            ckpt.save_atomic({
                "net": weights, "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler else None, "scaler": scaler.state_dict(),
                "ema": ema.state_dict() if ema is not None else None, "tracker": tracker.state_dict(),
                "rng": ckpt.rng_state(), "counters": asdict(counters), "data": data.state_dict(),
                "config": stage.config_yaml,
            }, last_path)
        for logger in stage.loggers:
            logger.flush()

    def log_metrics(metrics: dict[str, float], epoch: int) -> None:
        for logger in stage.loggers:
            logger.log(metrics, stage=stage.name, epoch=epoch, step=counters.step, global_step=counters.global_step)

    def save_weights(path: Path, epoch: int) -> None:
        if main and not tcfg.fast_dev_run:
            ckpt.save_atomic({"net": net.state_dict(), "data": data.state_dict(), "config": stage.config_yaml,
                              "monitor": monitor, "best": tracker.best, "epoch": epoch, "step": counters.step}, path)

    last_val_step = -1

    def validate(epoch: int) -> bool:
        """Evaluate, log, keep the best weights; True when early stopping says stop."""
        nonlocal last_val_step
        guard.check(counters.step, str(last_path) if main else "")
        with averaged_weights():
            scores = evaluate(net, val_loader, device, tcfg.precision, split="val")
            metrics = {f"val/{k}": v for k, v in scores.items()}
            net.head.on_validation_end("val", stage.run_dir)
            for split, loader in extra_loaders.items():
                scores = evaluate(net, loader, device, tcfg.precision, split=split)
                metrics.update({f"{split}/{k}": v for k, v in scores.items()})
            improved = tracker.update(metrics, epoch=epoch, step=counters.step)
            if improved:
                save_weights(stage.best_path, epoch)
        log_metrics(metrics, epoch)
        last_val_step = counters.step
        log.info(f"[{stage.name}] epoch {epoch} step {counters.step}: "
                 + "  ".join(f"{k}={v:.4f}" for k, v in metrics.items()) + ("  (best)" if improved else ""))
        return tracker.should_stop

    # ---- the loop ------------------------------------------------------------------------------------------------
    progress = ProgressBar(enabled=tcfg.progress and main, refresh_s=tcfg.progress_refresh_s)
    autocast = autocast_context(device, tcfg.precision)
    accum = tcfg.accumulate_grad_batches
    loss_smoothed = torch.zeros((), device=device)  # for the bar (bias-corrected when shown)
    interval_loss = torch.zeros((), device=device)  # loss summed since the last log line
    interval_batches, interval_samples, interval_t0 = 0, 0, time.monotonic()
    t_start = time.monotonic() - counters.train_seconds
    elapsed = counters.train_seconds  # time spent in this stage as rank 0 counts it, refreshed after every step
    stop_reason = None
    def train_mode() -> None:
        net.train()
        for m in stage.bn_frozen:  # a frozen backbone keeps its batch-norm statistics
            m.eval()

    if interrupt is not None:
        interrupt.armed = True
    while counters.epoch < max_epochs and stop_reason is None:
        for sampler_or_set in (train_loader.batch_sampler, train_loader.dataset):
            if hasattr(sampler_or_set, "set_epoch"):
                sampler_or_set.set_epoch(counters.epoch)
        train_loader.batch_sampler.set_start(counters.batch_in_epoch)
        train_mode()
        progress.start_epoch(f"{stage.name} {counters.epoch + 1}/{max_epochs}", batches_per_epoch)

        for batch in train_loader:
            batch = to_device(batch, device)
            counters.batch_in_epoch += 1
            sync_now = counters.batch_in_epoch % accum == 0 or counters.batch_in_epoch == batches_per_epoch
            # DDP: all-reduce gradients only on the micro-batch that completes an accumulation.
            no_sync = model.no_sync() if dist.is_distributed() and not sync_now else contextlib.nullcontext()
            with no_sync:
                with autocast:
                    _, loss = model(batch)
                scaler.scale(loss / accum if accum > 1 else loss).backward()
            guard.observe(loss)
            loss = loss.detach().float()
            loss_smoothed.lerp_(loss, 0.02)
            interval_loss += loss
            interval_batches += 1
            interval_samples += batch_size_of(batch) * world
            progress.update(counters.batch_in_epoch, batch_size_of(batch) * world, loss_smoothed)
            if not sync_now:
                continue

            # -- one optimizer step --
            if tcfg.gradient_clip_val:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(net.parameters(), tcfg.gradient_clip_val)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            lr = optimizer.param_groups[0]["lr"]  # the rate this step used (logged), before the schedule moves it
            if scheduler is not None and fit_schedule_to_time:
                # never behind the step count (so a machine fast enough runs the schedule as planned); OneCycle ends
                # at total_steps. `elapsed` is from the previous step's stop check: one step behind, no extra sync.
                by_time = math.ceil(total_steps * elapsed / max_seconds)
                seek(scheduler, min(max(scheduler.last_epoch + 1, by_time), total_steps))
            elif scheduler is not None:
                scheduler.step()
            if ema is not None:
                ema.update()
            counters.step += 1
            counters.global_step += 1

            if counters.step % tcfg.log_every_n_steps == 0:
                guard.check(counters.step, str(last_path) if main else "")
                now = time.monotonic()
                train_loss = float(dist.all_reduce_sum(interval_loss) / (interval_batches * world))
                rate = interval_samples / max(now - interval_t0, 1e-9)
                log_metrics({"train/loss": train_loss, "lr": lr, "samples_per_s": rate}, counters.epoch + 1)
                if not progress.enabled:
                    log.info(f"[{stage.name}] epoch {counters.epoch + 1} step {counters.step}: "
                             f"loss={train_loss:.4f} lr={lr:.3g} {rate:,.0f} samples/s")
                interval_loss.zero_()
                interval_batches, interval_samples, interval_t0 = 0, 0, now
            if tcfg.val_every_n_steps and counters.step % tcfg.val_every_n_steps == 0 and val_loader is not None:
                if validate(counters.epoch + 1):
                    stop_reason = "early stopping"
                train_mode()
            if max_seconds < math.inf:  # rank 0's clock decides for every rank (see rank0_value)
                elapsed = dist.rank0_value(time.monotonic() - t_start)
            if max_steps > 0 and counters.step >= max_steps:
                stop_reason = stop_reason or ("fast_dev_run" if tcfg.fast_dev_run else f"max_steps={max_steps}")
            elif elapsed >= max_seconds:
                stop_reason = stop_reason or f"max_time={tcfg.max_time}"
            if stop_reason:  # (an interrupt now: the stage ends as planned, then train() stops the run)
                break
            interrupted = interrupt is not None and interrupt.requested  # Ctrl-C or SIGTERM: resumable from here
            if interrupted or (tcfg.checkpoint_every_n_steps and counters.step % tcfg.checkpoint_every_n_steps == 0):
                counters.train_seconds = time.monotonic() - t_start
                save_last()
            if interrupted:
                raise KeyboardInterrupt

        # -- end of an epoch, or of the budget --
        progress.end_epoch(counters.batch_in_epoch)
        epoch = counters.epoch + 1  # the epoch just trained, as reported
        if counters.batch_in_epoch >= batches_per_epoch:
            counters.epoch, counters.batch_in_epoch = counters.epoch + 1, 0
        finishing = stop_reason is not None or counters.epoch >= max_epochs
        if tcfg.val_every_n_steps:
            validate_now = finishing and last_val_step != counters.step
        else:
            validate_now = finishing or counters.epoch % tcfg.val_every_n_epochs == 0
        if val_loader is not None and validate_now and validate(epoch):
            stop_reason = stop_reason or "early stopping"
        counters.train_seconds = time.monotonic() - t_start
        save_last()

    progress.close()
    if interrupt is not None:
        interrupt.armed = False
    if val_loader is None:
        with averaged_weights():
            save_weights(stage.best_path, counters.epoch)  # nothing to select on: the final weights are the best
    counters.stop_reason = stop_reason = stop_reason or f"max_epochs={max_epochs}"
    save_last(done=True)
    log.info(f"[{stage.name}] finished ({stop_reason}): {counters.step} steps in "
             f"{counters.train_seconds:.0f}s; " + (f"best {monitor} = {tracker.best}" if val_loader is not None
                                                   else "no validation split: best.pt holds the final weights"))
    return FitResult(counters=counters, monitor=monitor, best=tracker.best, stop_reason=stop_reason,
                     best_epoch=tracker.best_epoch, best_step=tracker.best_step)
