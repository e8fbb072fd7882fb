"""A stage's training state, set up apart from the loop and saved and restored in one place (`last.pt`).

`setup_training` builds what the loop steps (optimizer, schedule, gradient scaler, weight average, monitor tracker,
NaN guard, the DDP or compiled wrapper) and, on a resume, restores all of it with `TrainState.load_state_dict`,
from the dict that `TrainState.state_dict` wrote.
"""
from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from . import checkpoint as ckpt
from . import distributed as dist
from .callbacks import MonitorTracker, NonFiniteGuard
from .ema import WeightEMA
from .errors import UserError
from .inference import to_device
from .schedules import CLOSED_FORM
from .stages import Stage

log = logging.getLogger("trainer")


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

    def next_stage(self, index: int) -> Counters:
        """The counters a new stage starts from: the run's totals carried on."""
        return Counters(stage_index=index, global_step=self.global_step,
                        earlier_stages_seconds=self.earlier_stages_seconds + self.train_seconds)


@dataclass
class TrainState:
    net: nn.Module  # the TaskNet (model + head)
    model: nn.Module  # what the step calls: the net, or its DDP / compiled wrapper
    optimizer: torch.optim.Optimizer
    scheduler: Any | None
    scaler: torch.amp.GradScaler
    ema: WeightEMA | None
    tracker: MonitorTracker
    guard: NonFiniteGuard
    counters: Counters = field(default_factory=Counters)

    def state_dict(self) -> dict[str, Any]:
        return {
            "net": self.net.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict(), "ema": self.ema.state_dict() if self.ema is not None else None,
            "tracker": self.tracker.state_dict(), "rng": ckpt.rng_state(), "counters": asdict(self.counters),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            if state.get("ema") is None:
                log.warning("last.pt holds no weight average: it starts again from the resumed weights")
            else:
                self.ema.load_state_dict(state["ema"])
        self.tracker.load_state_dict(state["tracker"])
        self.counters = Counters(**state["counters"])
        ckpt.set_rng_state(state["rng"])
        self.guard.last_checked_step = self.counters.step


def setup_training(stage: Stage, device: torch.device, counters: Counters,
                   resume: dict[str, Any] | None = None) -> TrainState:
    """Everything the loop steps, for `stage` as planned; restored from `resume` (last.pt) when given."""
    tcfg, net, plan = stage.tcfg, stage.net, stage.plan
    net.to(device)
    if resume is None and getattr(net.model, "needs_data_init", False):  # e.g. a whitening first layer
        # the same first training images on every rank, whatever the number of processes
        first = next(iter(stage.data.loader("train", rank=0, world_size=1, limit=1)))
        net.model.init_from_data(to_device(first, device)["x"])
    try:
        keywords = stage.optimizer_factory.keywords
        optimizer = stage.optimizer_factory(param_groups(net, keywords.get("weight_decay"), tcfg.lr_scale,
                                                         keywords.get("lr")))
        scheduler = (stage.scheduler_factory(optimizer, total_steps=plan.total_steps)
                     if stage.scheduler_factory is not None else None)
    except (ValueError, TypeError) as e:
        raise UserError(f"cannot build the optimizer or schedule: {e}; check the optim.* and sched.* config") from None
    if plan.schedule_to_time and scheduler is not None and not isinstance(scheduler, CLOSED_FORM):
        raise UserError(f"trainer.schedule_to_max_time moves the schedule by time, which {type(scheduler).__name__} "
                        "cannot do; use one of trainer.schedules (sched=onecycle, cosine, step, none)")
    if tcfg.precision == "fp16" and device.type != "cuda":
        raise UserError("trainer.precision=fp16 needs CUDA (it uses a GradScaler); use bf16 or fp32 on CPU")
    scaler = torch.amp.GradScaler(device.type, enabled=tcfg.precision == "fp16")
    tracker = MonitorTracker(tcfg.monitor or f"val/{net.head.monitor}", tcfg.monitor_mode or net.head.monitor_mode,
                             tcfg.early_stopping_patience, tcfg.early_stopping_min_delta)
    model = net
    if dist.is_distributed():
        model = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    if tcfg.compile:
        model = torch.compile(model)
    ema = WeightEMA(net, tcfg.ema_decay) if tcfg.ema_decay else None  # after DDP has given every rank rank 0's weights
    state = TrainState(net=net, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler, ema=ema,
                       tracker=tracker, guard=NonFiniteGuard(device, tcfg.precision, tcfg.divergence_factor),
                       counters=counters)
    if resume is not None:
        state.load_state_dict(resume)
        log.info(f"resumed stage '{stage.name}' at epoch {state.counters.epoch + 1}, step {state.counters.step}")
    state.counters.total_steps = plan.total_steps
    return state


def param_groups(net: nn.Module, weight_decay: float | None, lr_scale: dict[str, float] | None = None,
                 lr: float | None = None) -> list[dict[str, Any]]:
    """nanoGPT's split: weight decay on matrices and kernels, none on biases, norms and embeddings' 1-d params.
    `lr_scale` ({regex: factor} on parameter names, the first match wins) puts the matching parameters in groups of
    their own at `lr` x factor: a part that must move faster than the rest, such as a linear member beside a
    pretrained encoder."""
    scales = [(re.compile(pattern), float(factor)) for pattern, factor in (lr_scale or {}).items()]
    if scales and lr is None:
        raise UserError("trainer.lr_scale multiplies optim.lr, which this optimizer config does not set")
    trainable = [(name, p) for name, p in net.named_parameters() if p.requires_grad]
    for regex, _ in scales:
        if not any(regex.search(name) for name, _ in trainable):
            raise UserError(f"trainer.lr_scale: '{regex.pattern}' matches no trainable parameter")
    groups: dict[tuple[float, bool], list[nn.Parameter]] = {}
    for name, p in trainable:
        factor = next((f for regex, f in scales if regex.search(name)), 1.0)
        groups.setdefault((factor, bool(weight_decay) and p.ndim >= 2), []).append(p)
    out = []
    for (factor, decayed), params in sorted(groups.items(), key=lambda item: (item[0][0] != 1.0, not item[0][1])):
        group: dict[str, Any] = {"params": params}
        if weight_decay:
            group["weight_decay"] = weight_decay if decayed else 0.0
        if factor != 1.0:
            group["lr"] = lr * factor
        out.append(group)
    return out
