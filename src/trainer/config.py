"""Typed view of the `trainer:` config section, so that a typo or a bad value fails before any work starts."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields, replace
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .errors import UserError, one_line

PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass
class TrainerConfig:
    # Budgets: whichever is reached first ends the stage.
    max_epochs: int = 10
    max_steps: int = -1  # optimizer steps; -1 = no limit
    max_time: Optional[str] = None  # seconds ("1800") or "HH:MM:SS"
    # The lr schedule runs on the larger of the step and the time fractions, so its decay ends with whichever budget
    # ends first (budgeted training, Li et al. 2020): a run cut by max_time on a busy machine still anneals.
    # Nothing to fit to without max_time.
    schedule_to_max_time: bool = False
    # Validation cadence.
    val_every_n_epochs: int = 1
    val_every_n_steps: Optional[int] = None
    # Debugging presets, expanded by `trainer_config` into the plain settings below (the loop never reads them):
    # one batch of each split and no checkpoints / train and validate on the same few batches.
    fast_dev_run: bool = False
    overfit_batches: int = 0
    # int = batches, float in (0, 1] = fraction (Lightning's convention; typed Any so that 1 stays one batch)
    limit_train_batches: Any = None
    limit_val_batches: Any = None
    limit_test_batches: Any = None
    val_split: str = "val"  # the split validation scores (overfit_batches: train)
    shuffle: bool = True  # the training split's own batch plan; False reads it in order (overfit_batches)
    save_checkpoints: bool = True  # False: best.pt/last.pt are not written; a next stage starts from memory
    # Optimisation.
    accumulate_grad_batches: int = 1
    gradient_clip_val: Optional[float] = None
    # Stop like a NaN when the training loss's moving average grows past this multiple of the lowest it has been (a
    # diverging run stays finite for long); null turns the check off.
    divergence_factor: Optional[float] = 100.0
    # Learning-rate factors by regex on parameter names, {'^model[.]bag_member[.]': 30}: parameters that must move
    # faster or slower than the rest (optim.lr x factor; the first regex that matches a name wins).
    lr_scale: Optional[dict[str, float]] = None
    ema_decay: Optional[float] = None  # e.g. 0.999: validate, keep and test an average of the weights (timm, Keras)
    precision: str = "fp32"  # fp32 | bf16 (autocast) | fp16 (autocast + GradScaler, CUDA only)
    device: str = "auto"  # auto = CUDA when present, else CPU; or "cpu", "cuda", "cuda:1"
    deterministic: bool = False
    compile: bool = False
    # Monitoring, checkpoints, early stopping.
    monitor: Optional[str] = None  # e.g. "val/acc"; None = the head's default
    monitor_mode: Optional[str] = None  # "max" | "min"; None = the head's default
    early_stopping_patience: Optional[int] = None  # validations without improvement before stopping
    early_stopping_min_delta: float = 0.0
    checkpoint_every_n_steps: Optional[int] = None  # also write last.pt mid-epoch (for exact resume of long epochs)
    test_after_fit: bool = True  # evaluate the best weights on the test split, if the dataset has one
    # Model config keys changed for that final test only, e.g. {tta_shift: 1}: inference options such as test-time
    # augmentation that would cost too much at every validation (mode=eval takes them as model.KEY=VALUE).
    test_model: Optional[dict[str, Any]] = None
    also_evaluate: list[str] = field(default_factory=list)  # more splits scored at each validation, e.g. [train_eval]
    # Console and logs.
    log_every_n_steps: int = 50
    progress: bool = True
    progress_refresh_s: float = 0.5


def trainer_config(node: DictConfig, where: str = "trainer") -> TrainerConfig:
    """Validate `node` against TrainerConfig and return it as a dataclass; one-line UserError on a bad key or value."""
    schema = OmegaConf.structured(TrainerConfig)
    try:
        merged = OmegaConf.merge(schema, node)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or ""
        if "not in struct" in str(e) or "Key '" in str(e) and "not in" in str(e):
            valid = ", ".join(f.name for f in fields(TrainerConfig))
            raise UserError(f"unknown key '{where}.{key}'; valid keys are: {valid}") from None
        raise UserError(f"bad value for '{where}.{key}': {one_line(e.msg if hasattr(e, 'msg') else e)}") from None
    cfg: TrainerConfig = OmegaConf.to_object(merged)
    _check(cfg, where)
    return expand_debug(cfg)


def expand_debug(cfg: TrainerConfig) -> TrainerConfig:
    """The debug presets as the plain settings they stand for, so that nothing downstream branches on them."""
    if cfg.fast_dev_run:
        return replace(cfg, max_epochs=1, max_steps=1, limit_train_batches=1, limit_val_batches=1,
                       limit_test_batches=1, save_checkpoints=False)
    if cfg.overfit_batches:
        n = cfg.overfit_batches
        return replace(cfg, limit_train_batches=n, limit_val_batches=n, val_split="train", shuffle=False)
    return cfg


def _check(cfg: TrainerConfig, where: str) -> None:
    def bad(key: str, msg: str) -> UserError:
        return UserError(f"bad value for '{where}.{key}': {msg}")

    if cfg.precision not in PRECISIONS:
        raise bad("precision", f"'{cfg.precision}' is not one of {', '.join(PRECISIONS)}")
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", cfg.device):
        raise bad("device", f"'{cfg.device}' is not one of auto, cpu, cuda, cuda:N, mps")
    if cfg.max_epochs < 1 and cfg.max_steps < 1:
        raise bad("max_epochs", "needs max_epochs >= 1 or max_steps >= 1")
    if cfg.ema_decay is not None and not 0.0 < cfg.ema_decay < 1.0:
        raise bad("ema_decay", f"{cfg.ema_decay} is not in (0, 1); null turns the average off")
    if cfg.divergence_factor is not None and not cfg.divergence_factor > 1:
        raise bad("divergence_factor", f"{cfg.divergence_factor} must be > 1 (a multiple of the lowest smoothed loss), or null")
    if cfg.gradient_clip_val is not None and not cfg.gradient_clip_val > 0:  # a negative norm flips the gradients
        raise bad("gradient_clip_val", f"{cfg.gradient_clip_val} must be > 0, or null for no clipping")
    if cfg.accumulate_grad_batches < 1:
        raise bad("accumulate_grad_batches", "must be >= 1")
    if cfg.overfit_batches < 0:
        raise bad("overfit_batches", "must be 0 (off) or a number of batches >= 1")
    if cfg.val_every_n_epochs < 1:
        raise bad("val_every_n_epochs", "must be >= 1")
    for key in ("val_every_n_steps", "checkpoint_every_n_steps", "early_stopping_patience"):
        value = getattr(cfg, key)
        if value is not None and value < 1:
            raise bad(key, "must be >= 1 or null")
    for key in ("limit_train_batches", "limit_val_batches", "limit_test_batches"):
        value = getattr(cfg, key)
        count = isinstance(value, int) and not isinstance(value, bool) and value >= 1
        fraction = isinstance(value, float) and 0.0 < value <= 1.0
        if value is not None and not (count or fraction):
            raise bad(key, f"{value!r} is neither a batch count >= 1 nor a fraction in (0.0, 1.0]")
    for pattern, factor in (cfg.lr_scale or {}).items():
        try:
            re.compile(pattern)
        except re.error as e:
            raise bad("lr_scale", f"'{pattern}' is not a regular expression ({e})") from None
        if not factor > 0:
            raise bad("lr_scale", f"the factor of '{pattern}' is {factor}; it must be > 0")
    if cfg.monitor_mode not in (None, "max", "min"):
        raise bad("monitor_mode", f"'{cfg.monitor_mode}' is not max or min")
    if cfg.max_time is not None:
        parse_duration(cfg.max_time, f"{where}.max_time")
    if cfg.log_every_n_steps < 1:
        raise bad("log_every_n_steps", "must be >= 1")


def parse_duration(value: str | int | float, key: str = "max_time") -> float:
    """Seconds from "1800", "90.5", "00:30:00" or "1:00:00:00" (days:hours:minutes:seconds)."""
    text = str(value).strip()
    try:
        if ":" not in text:
            seconds = float(text)
        else:
            parts = [float(p) for p in text.split(":")]
            if len(parts) > 4:
                raise ValueError
            seconds = 0.0
            for part, unit in zip(reversed(parts), (1, 60, 3600, 86400)):
                seconds += part * unit
    except ValueError:
        raise UserError(f"bad value for '{key}': '{text}' is not seconds or [DD:]HH:MM:SS") from None
    if not 0 < seconds < math.inf:  # float() also reads "nan" and "inf"
        raise UserError(f"bad value for '{key}': must be a finite number of seconds > 0")
    return seconds
