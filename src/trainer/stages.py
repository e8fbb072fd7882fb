"""Stages: each one a full config (the root with the stage's overrides), built into data, model and head, with its
step plan, before the loop trains it.

A task without `stages` is one stage called "train". A stage entry overrides config sections and may set the stage
options (see docs/architecture.md): `init` (weights and data state from the previous stage or a file),
`trainable`/`frozen` (which parameters train), and `pseudo_label` (self-training on an unlabelled split).
"""
from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from . import checkpoint as ckpt
from . import distributed as dist
from . import inference
from .config import TrainerConfig, parse_duration, trainer_config
from .errors import UserError, one_line

log = logging.getLogger("trainer")

#: Keys of a stage entry that configure the stage itself rather than override a config section.
STAGE_OPTIONS = ("init", "trainable", "frozen", "pseudo_label")
_ABSENT = object()


class TaskNet(nn.Module):
    """Model and head as one module, so DDP also synchronises the head's parameters (e.g. center-loss centres)."""

    def __init__(self, model: nn.Module, head: nn.Module):
        super().__init__()
        self.model, self.head = model, head

    def forward(self, batch: dict[str, Any]) -> tuple[Any, torch.Tensor]:
        outputs = self.model(batch["x"])
        return outputs, self.head.loss(outputs, batch)


@dataclass(frozen=True)
class StepPlan:
    """How long the stage trains: its batches and optimizer steps, and the time budget."""

    batches_per_epoch: int
    accumulate: int
    max_epochs: int
    max_steps: int  # -1: no limit
    total_steps: int  # what the schedule is laid out over
    max_seconds: float  # inf: no limit
    schedule_to_time: bool  # the schedule also advances with the time spent (trainer.schedule_to_max_time)


@dataclass
class Stage:
    """Everything a stage needs to train: built from its config by `build_stage` (or directly, in tests)."""

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
    loggers: list = field(default_factory=list)
    bn_frozen: list[nn.Module] = field(default_factory=list)
    # set by `plan_steps`
    plan: StepPlan | None = None
    train_loader: Any = None
    val_loader: Any = None  # None: the dataset has no validation split
    extra_loaders: dict[str, Any] = field(default_factory=dict)  # trainer.also_evaluate

    @property
    def last_path(self) -> Path | None:
        return self.run_dir / "checkpoints" / "last.pt" if self.run_dir is not None else None


@dataclass
class Handoff:
    """What a finished stage hands the next: its best weights (a checkpoint, or in memory when it wrote none) and its
    DataModule's state (a vocabulary, class names, pseudo-labels)."""

    best_path: Path | None = None
    weights: dict[str, torch.Tensor] | None = None
    data_state: dict[str, Any] | None = None

    def load_weights(self) -> tuple[dict[str, torch.Tensor], str]:
        if self.weights is not None:
            return self.weights, "the previous stage's weights (no checkpoint written, e.g. fast_dev_run: in memory)"
        return ckpt.load(self.best_path)["net"], str(self.best_path)

    def load_data_state(self) -> dict[str, Any]:
        if self.data_state is None:
            self.data_state = ckpt.load(self.best_path).get("data") or {}
        return self.data_state


def build(node: DictConfig, what: str, **kwargs: Any) -> Any:
    """instantiate() with a one-line error that names the config section to fix."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        while isinstance(cause, InstantiationException) and cause.__cause__ is not None:
            cause = cause.__cause__
        if isinstance(cause, UserError):
            raise cause from None
        target = node.get("_target_", "?") if isinstance(node, DictConfig) else "?"
        detail = f"{type(cause).__name__}: {cause}" if cause is not None else one_line(e)
        raise UserError(f"cannot build {what} ({target}): {one_line(detail)}; check the '{what}.*' config") from None


# ---- the stages of a config -----------------------------------------------------------------------------------------
def stage_configs(cfg: DictConfig, pinned: Sequence[str] = ()) -> list[tuple[str, DictConfig]]:
    """The run's stages, each as a full config: the root with the stage's overrides applied.

    An override section that names a different `_target_` replaces the root's section (switching Adam for SGD must
    not carry Adam's betas over); otherwise it is merged key by key. The `pinned` keys (what the command line and
    the debug config set, see `Invocation.pinned_keys`) keep the root's value in every stage that has the key and
    builds the same `_target_` above it: a command-line `trainer.max_epochs=1` or `debug=limit` must not be undone
    by a stage's own `max_epochs`, and `model.hidden` for the tagger must not reach the language model a stage builds
    in its place; one stage alone is set with `stages.NAME.KEY=VALUE`.
    """
    base = OmegaConf.masked_copy(cfg, [k for k in cfg if k not in ("stages", "init")])
    root_init = {k: v for k, v in (cfg.get("init") or {}).items() if v is not None and v is not False}
    stages = cfg.get("stages")
    if not stages:
        scfg = base.copy()
        with open_dict(scfg):
            scfg.stage = {"name": "train", "init": root_init or None}
        return [("train", scfg)]
    out = []
    for name, node in stages.items():
        if node is None:
            continue
        if not out and root_init:  # the root's init seeds the first stage, under the stage's own
            node = OmegaConf.merge(node, {"init": OmegaConf.merge(root_init, node.get("init") or {})})
        scfg = base.copy()
        with open_dict(scfg):
            for key, value in node.items():
                if key in STAGE_OPTIONS:
                    continue
                if key not in scfg:
                    raise UserError(f"stages.{name}.{key}: '{key}' is not a config section "
                                    f"(valid: {', '.join(str(k) for k in scfg)}, {', '.join(STAGE_OPTIONS)})")
                old = scfg[key]
                replace = (not isinstance(value, DictConfig) or not isinstance(old, DictConfig)
                           or ("_target_" in value and value.get("_target_") != old.get("_target_")))
                scfg[key] = value if replace else OmegaConf.merge(old, value)
            for key in pinned:
                if f"stages.{name}.{key}" in pinned:  # set for this stage on the command line too: that wins
                    continue
                if not _same_component(base, scfg, key):  # the stage builds another class: the key means else
                    continue
                ours = OmegaConf.select(base, key, default=_ABSENT)
                theirs = OmegaConf.select(scfg, key, default=_ABSENT)
                if ours is not _ABSENT and theirs is not _ABSENT and ours != theirs:
                    OmegaConf.update(scfg, key, ours, merge=False)
                    log.info(f"[{name}] {key}={ours} from the command line or debug=, over the stage's {theirs}")
            scfg.stage = {"name": name, **{k: node.get(k) for k in STAGE_OPTIONS}}
        out.append((str(name), scfg))
    if not out:
        raise UserError("stages: every stage is disabled (null)")
    return out


def _same_component(base: DictConfig, stage: DictConfig, key: str) -> bool:
    """Whether every section above `key` builds the same `_target_` in the stage as in the root: a command-line
    `model.hidden` is the tagger's, not the language model's that a stage puts in its place."""
    parts = key.split(".")
    for i in range(1, len(parts)):
        target = ".".join(parts[:i]) + "._target_"
        if OmegaConf.select(base, target, default=None) != OmegaConf.select(stage, target, default=None):
            return False
    return True


def check_stages(cfg: DictConfig) -> None:
    """Every stage's trainer settings and section values, before the first stage trains: one line naming the stage
    (a typo in stage 2 must not wait for stage 1 to train)."""
    from .schema import check_sections

    check_sections(cfg)
    trainer_config(cfg.trainer)
    stages = stage_configs(cfg)
    for name, scfg in stages if cfg.get("stages") else []:
        check_sections(scfg, f"stages.{name}.")
        trainer_config(scfg.trainer, where=f"stages.{name}.trainer")
        for key in (scfg.stage.get("pseudo_label") or {}):
            if key not in PSEUDO_LABEL_KEYS:
                raise UserError(f"stages.{name}.pseudo_label: unknown key '{key}'; valid: {', '.join(PSEUDO_LABEL_KEYS)}")


# ---- building a stage -----------------------------------------------------------------------------------------------
def build_stage(scfg: DictConfig, name: str, index: int, n_stages: int, run_dir: Path, loggers: list,
                device: torch.device, previous: Handoff | None, counters: Any,
                resume: dict[str, Any] | None = None, record: bool = True) -> Stage:
    """The stage's data, model and head from its config, seeded by the previous stage (`init`), with its step plan.

    The resolved config is written to the run folder as soon as it is known on a fresh stage (a run that fails early
    keeps its record), and, on a resumed one, only once the step plan has passed its check against the resumed
    plan (a refused resume changes nothing); not at all without `record` (a finished stage rebuilt for its test)."""
    main = dist.is_main()
    tcfg = trainer_config(scfg.trainer)
    opts = scfg.get("stage") or {}
    init = opts.get("init") or {}
    data = build(scfg.dataset, "dataset")
    if callable(getattr(data, "limit_samples", None)):  # a hint: read (render, download) no more than will be used
        data.limit_samples(sample_limits(tcfg, data))
    data_state = _initial_data_state(init, previous, resume, name)
    if data_state:
        data.load_state_dict(data_state)
    data.setup("fit")
    with open_dict(scfg):
        scfg.data_info = data.info
    net = TaskNet(build(scfg.model, "model"), build(scfg.head, "head"))
    pseudo = opts.get("pseudo_label") if resume is None else None  # a resumed stage has its pseudo-labels in last.pt
    fresh = _fresh_values(net, pseudo.get("reset"), name) if pseudo else {}
    if init.get("checkpoint") and resume is None:  # (a resumed stage's weights come from last.pt)
        _init_weights(net, init, previous, name)
    bn_frozen = apply_freeze(net, opts.get("trainable"), opts.get("frozen"))
    text = OmegaConf.to_yaml(scfg, resolve=True)
    config_path = run_dir / ("config.yaml" if n_stages == 1 else f"config.{name}.yaml")
    if main and resume is None:
        config_path.write_text(text)
    if pseudo:
        _pseudo_label(net, data, pseudo, tcfg, device, name)
        net.load_state_dict(fresh, strict=False)  # the student learns these afresh from the labels
    if main:
        _log_header(scfg, name, index, n_stages, run_dir, data, net)
    stage = Stage(
        name=name, index=index, cfg=scfg, config_yaml=text, tcfg=tcfg, data=data, net=net,
        optimizer_factory=build(scfg.optim, "optim"),
        scheduler_factory=build(scfg.sched, "sched") if scfg.get("sched") else None,
        run_dir=run_dir if main else None, loggers=loggers, bn_frozen=bn_frozen,
        best_path=run_dir / "checkpoints" / ("best.pt" if index == n_stages - 1 else f"best-{name}.pt"),
    )
    plan_steps(stage, counters)
    if main and resume is not None and record:
        config_path.write_text(text)
    return stage


def sample_limits(tcfg: TrainerConfig, data: Any) -> dict[str, int]:
    """The most samples of each split a stage will read where the trainer's settings bound it (batch-count limits,
    which the debug presets set, and max_steps), for a DataModule that can read less (`limit_samples`): a
    `debug=fast_dev_run` of a rendered dataset then renders a batch of each split, not the whole dataset."""
    def count(limit: Any) -> int | None:
        return limit if isinstance(limit, int) and not isinstance(limit, bool) else None

    train_bounds = [b for b in (count(tcfg.limit_train_batches) and tcfg.limit_train_batches
                                * (tcfg.max_epochs if tcfg.shuffle else 1),
                                tcfg.max_steps * tcfg.accumulate_grad_batches if tcfg.max_steps > 0 else None) if b]
    val = count(tcfg.limit_val_batches)
    test = count(tcfg.limit_test_batches)
    uses: list[tuple[str, int | None]] = [("train", min(train_bounds) * data.batch_size if train_bounds else None)]
    uses += [(split, val and val * data.eval_batch_size) for split in (tcfg.val_split, *tcfg.also_evaluate)]
    if tcfg.test_after_fit:
        uses.append(("test", test and test * data.eval_batch_size))
    out: dict[str, int] = {}
    for split in {split for split, _ in uses}:
        bounds = [b for s, b in uses if s == split]
        if all(bounds):  # every use of the split is bounded
            out[split] = max(bounds)
    return out


def _log_header(scfg: DictConfig, name: str, index: int, n_stages: int, run_dir: Path, data: Any,
                net: TaskNet) -> None:
    """A few lines on what the stage is (the whole config is in the run folder's config.yaml; `--cfg job` prints
    it): the task and run folder, the data, model, head and parameters, and the stages."""
    if index == 0:
        log.info(f"task {scfg.get('task_name')}: run folder {run_dir} (config.yaml there holds the full config)")
    stage = f"stage {index + 1}/{n_stages} '{name}': " if n_stages > 1 else ""
    sizes = ", ".join(f"{split} {_size(ds)}" for split, ds in data.splits.items())
    n_train = sum(p.numel() for p in net.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in net.parameters())
    trains = "all train" if n_train == n_all else f"{n_train:,} train"
    log.info(f"[{name}] {stage}data {type(data).__name__} ({sizes or 'no split read'}); model "
             f"{type(net.model).__name__} + head {type(net.head).__name__}: {n_all:,} parameters ({trains})")


def _size(dataset: Any) -> str:
    try:
        return f"{len(dataset):,}"
    except TypeError:
        return "?"


def _initial_data_state(init: DictConfig, previous: Handoff | None, resume: dict[str, Any] | None,
                        stage: str) -> dict[str, Any] | None:
    """The DataModule's state before `setup`: last.pt's on a resume, else the previous stage's under `init.data`."""
    if resume is not None:
        return resume.get("data")
    source = init.get("data")
    if not source:
        return None
    if source != "previous":
        return ckpt.load(source).get("data") or {}
    if previous is None:
        raise UserError(f"stages.{stage}.init.data=previous but '{stage}' is the first stage")
    return previous.load_data_state()


def _init_weights(net: TaskNet, init: DictConfig, previous: Handoff | None, stage: str) -> None:
    """Seed a stage's weights from a checkpoint: `previous` (the previous stage's best) or a path, filtered and
    renamed by `init.include`/`exclude`/`rename`."""
    source = init.get("checkpoint")
    if source != "previous":
        state = ckpt.load(source)["net"]
    elif previous is None:
        raise UserError(f"stages.{stage}.init.checkpoint=previous but '{stage}' is the first stage")
    else:
        state, source = previous.load_weights()
    state = ckpt.filter_state(state, init.get("include"), init.get("exclude"),
                              OmegaConf.to_container(init.rename) if init.get("rename") else None)
    loaded = ckpt.load_partial(net, state, f"stages.{stage}.init from {source}", strict=bool(init.get("strict")))
    log.info(f"[{stage}] initialised {len(loaded)} tensors from {source}")


PSEUDO_LABEL_KEYS = ("split", "threshold", "max_items", "balance", "reset")


def _fresh_values(net: TaskNet, patterns: Sequence[str] | None, stage: str) -> dict[str, torch.Tensor]:
    """Copies of the newly built net's parameters and buffers whose names match `pseudo_label.reset`: put back once
    the teacher (the stage's initial weights) has labelled, so the student learns them from the labels alone."""
    if not patterns:
        return {}
    regexes = [re.compile(p) for p in patterns]
    fresh = {k: v.detach().clone() for k, v in net.state_dict().items() if any(r.search(k) for r in regexes)}
    if not fresh:
        raise UserError(f"stages.{stage}.pseudo_label.reset: {list(patterns)} matches no parameter; names look like "
                        f"{', '.join(list(net.state_dict())[:3])}")
    return fresh


def _pseudo_label(net: TaskNet, data: Any, options: DictConfig, tcfg: TrainerConfig, device: torch.device,
                  stage: str) -> None:
    """Self-training: label `options.split` with the stage's initial weights and hand the confident items to the
    DataModule's training split. Every rank labels the whole split, so all agree without a gather."""
    unknown = set(options) - set(PSEUDO_LABEL_KEYS)
    if unknown:
        raise UserError(f"stages.{stage}.pseudo_label: unknown key(s) {', '.join(sorted(unknown))}; valid: "
                        f"{', '.join(PSEUDO_LABEL_KEYS)}")
    split, threshold, max_items = options.get("split"), options.get("threshold", 0.5), options.get("max_items")
    if not data.has_split(split):
        raise UserError(f"stages.{stage}.pseudo_label.split='{split}' does not exist; the dataset has: "
                        f"{', '.join(data.splits)}")
    net.to(device)
    loader = data.loader(split)
    balance = bool(options.get("balance", False))
    indices, labels, seen = inference.pseudo_label(net, loader, device, tcfg.precision, float(threshold), max_items,
                                                   balance)
    data.set_pseudo_labels(split, indices, labels)
    how = [f"confidence >= {threshold}"] + ([f"at most {max_items}"] if max_items is not None else []) + (
        ["as many of each class"] if balance else [])
    log.info(f"[{stage}] pseudo-labelled {len(indices):,} of {seen:,} '{split}' items ({', '.join(how)})")


def plan_steps(stage: Stage, counters: Any) -> StepPlan:
    """The stage's loaders and step plan; a resumed stage (`counters.total_steps` set) must keep its plan where a
    learning-rate schedule is laid out over it."""
    tcfg, data = stage.tcfg, stage.data
    rank, world = dist.rank(), dist.world_size()
    if data.batch_size % world:
        raise UserError(f"dataset.batch_size={data.batch_size} is the global batch; it must divide by {world} ranks")
    stage.train_loader = data.loader("train", train=tcfg.shuffle, rank=rank, world_size=world,
                                     limit=tcfg.limit_train_batches)
    stage.val_loader = (data.loader(tcfg.val_split, rank=rank, world_size=world, limit=tcfg.limit_val_batches)
                        if data.has_split(tcfg.val_split) else None)
    for split in tcfg.also_evaluate:
        if not data.has_split(split):
            raise UserError(f"trainer.also_evaluate: split '{split}' does not exist; the dataset has: "
                            f"{', '.join(data.splits)}")
    stage.extra_loaders = {s: data.loader(s, rank=rank, world_size=world, limit=tcfg.limit_val_batches)
                           for s in tcfg.also_evaluate}
    batches = len(stage.train_loader.batch_sampler)
    if batches == 0:
        raise UserError("the training split yields no full batch; lower dataset.batch_size or add data")
    steps_per_epoch = math.ceil(batches / tcfg.accumulate_grad_batches)
    total = steps_per_epoch * tcfg.max_epochs
    if tcfg.max_steps >= 0:
        total = min(tcfg.max_steps, total)
    if counters.total_steps not in (None, total) and stage.scheduler_factory is not None:
        raise UserError(f"resume: stage '{stage.name}' was planned for {counters.total_steps} steps and its config now "
                        f"gives {total} (trainer.max_epochs, max_steps or the data changed); its learning-rate "
                        "schedule is laid out over the plan: drop the change, or start a new run")
    max_seconds = parse_duration(tcfg.max_time) if tcfg.max_time else math.inf
    stage.plan = StepPlan(batches_per_epoch=batches, accumulate=tcfg.accumulate_grad_batches,
                          max_epochs=tcfg.max_epochs, max_steps=tcfg.max_steps, total_steps=total,
                          max_seconds=max_seconds, schedule_to_time=tcfg.schedule_to_max_time and max_seconds < math.inf)
    return stage.plan


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
