"""What one job does, by `mode`: train (the stages in order, then test), eval (a checkpoint on a split), predict.

A stage is the root config with the stage's overrides merged in (see `stage_configs`); a task without `stages`
is one stage called "train". Each stage builds its DataModule, model and head with `hydra.utils.instantiate`.
"""
from __future__ import annotations

import json
import logging
import os
import random
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from . import checkpoint as ckpt
from . import distributed as dist
from .callbacks import GracefulInterrupt
from .cli import CONF_DIR
from .config import trainer_config
from .errors import UserError, WeightsUnavailable, one_line
from .loggers import CSVLogger, plot_curves
from .loop import Counters, Stage, TaskNet, apply_freeze, autocast_context, evaluate, fit, select_device, to_device
from .progress import summary_table

log = logging.getLogger("trainer")

#: Keys of a stage entry that configure the stage itself rather than override a config section.
STAGE_OPTIONS = ("init", "trainable", "frozen")
_ABSENT = object()
#: Dataset keys that describe the machine rather than the data: eval/predict take them from the current config.
MACHINE_KEYS = {"num_workers", "render_workers", "pin_memory", "download", "cache_dir"}


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


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


# ---- stages -------------------------------------------------------------------------------------------------------
def stage_configs(cfg: DictConfig, pinned: Sequence[str] = ()) -> list[tuple[str, DictConfig]]:
    """The run's stages, each as a full config: the root with the stage's overrides applied.

    An override section that names a different `_target_` replaces the root's section (switching Adam for SGD must
    not carry Adam's betas over); otherwise it is merged key by key. The `pinned` keys (what the command line and
    the debug config set, see `command_line_keys`) keep the root's value in every stage that has the key: a
    command-line `trainer.max_epochs=1` or `debug=limit` must not be undone by a stage's own `max_epochs`; one
    stage alone is set with `stages.NAME.KEY=VALUE`.
    """
    base = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "stages"])
    stages = cfg.get("stages")
    if not stages:
        return [("train", base)]
    out = []
    for name, node in stages.items():
        if node is None:
            continue
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


def command_line_keys() -> list[str]:
    """The dotted config keys this job's command line sets, and those its `debug=` config sets."""
    from hydra.core.hydra_config import HydraConfig

    keys = []
    for o in _task_overrides():
        key = o.key_or_group
        if o.is_delete() or key.startswith("hydra.") or key == "stages":
            continue
        value = o.value()
        if "." in key:
            keys.append(key)
        elif isinstance(value, dict):  # trainer={max_epochs: 1}
            keys += [f"{key}.{k}" for k in _leaf_keys(OmegaConf.create(value))]
    debug = HydraConfig.get().runtime.choices.get("debug") if HydraConfig.initialized() else None
    if debug:
        keys += _leaf_keys(OmegaConf.load(Path(CONF_DIR) / "debug" / f"{debug}.yaml"))
    return keys


def _leaf_keys(node: DictConfig, prefix: str = "") -> list[str]:
    keys = []
    for k, v in node.items():
        if k == "defaults":
            continue
        keys += _leaf_keys(v, f"{prefix}{k}.") if isinstance(v, DictConfig) else [f"{prefix}{k}"]
    return keys


def build_stage(scfg: DictConfig, name: str, index: int, n_stages: int, run_dir: Path, main: bool,
                loggers: list, prev_best: Path | dict | None, resuming: bool = False) -> Stage:
    """The stage's data, model, head and optimiser factories from its config. Its resolved config is written to the
    run folder now, or, `resuming`, by `fit` once the resume has passed its checks (a refused one changes nothing)."""
    tcfg = trainer_config(scfg.trainer)
    data = build(scfg.dataset, "dataset")
    data.setup()
    with open_dict(scfg):
        scfg.data_info = data.info
    model = build(scfg.model, "model")
    head = build(scfg.head, "head")
    net = TaskNet(model, head)
    opts = scfg.get("stage") or {}
    init = opts.get("init")
    if init:
        _init_weights(net, init, prev_best, name)
    bn_frozen = apply_freeze(net, opts.get("trainable"), opts.get("frozen"))
    text = OmegaConf.to_yaml(scfg, resolve=True)
    config_path = run_dir / ("config.yaml" if n_stages == 1 else f"config.{name}.yaml")
    if main and not resuming:
        config_path.write_text(text)
    if main and index == 0:
        from rich.syntax import Syntax

        from .progress import console

        console.print(Syntax(text, "yaml", background_color="default"))
    n_train = sum(p.numel() for p in net.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in net.parameters())
    log.info(f"[{name}] {type(model).__name__} + {type(head).__name__}: {n_train:,} of {n_all:,} parameters train")
    best_path = run_dir / "checkpoints" / ("best.pt" if index == n_stages - 1 else f"best-{name}.pt")
    return Stage(
        name=name, index=index, cfg=scfg, config_yaml=text, tcfg=tcfg, data=data, net=net,
        optimizer_factory=build(scfg.optim, "optim"),
        scheduler_factory=build(scfg.sched, "sched") if scfg.get("sched") else None,
        run_dir=run_dir if main else None, best_path=best_path, loggers=loggers, bn_frozen=bn_frozen,
        config_path=config_path if resuming else None,
    )


def _init_weights(net: TaskNet, init: DictConfig, prev_best: Path | dict | None, stage: str) -> None:
    """Seed a stage's weights from a checkpoint: `previous` (the previous stage's best) or a path.

    Under fast_dev_run, which writes no checkpoints, `prev_best` is the previous stage's state_dict in memory."""
    source = init.get("checkpoint", "previous")
    if source != "previous":
        state = ckpt.load(source)["net"]
    elif prev_best is None:
        raise UserError(f"stages.{stage}.init.checkpoint=previous but '{stage}' is the first stage")
    elif isinstance(prev_best, dict):
        state, source = prev_best, "the previous stage's weights (fast_dev_run: in memory)"
    else:
        state, source = ckpt.load(prev_best)["net"], prev_best
    state = ckpt.filter_state(state, init.get("include"), init.get("exclude"),
                              OmegaConf.to_container(init.rename) if init.get("rename") else None)
    loaded = ckpt.load_partial(net, state, f"stages.{stage}.init from {source}", strict=bool(init.get("strict")))
    log.info(f"[{stage}] initialised {len(loaded)} tensors from {source}")


# ---- modes --------------------------------------------------------------------------------------------------------
def run(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Run one job; returns the summary also written to <run_dir>/results.json."""
    main = dist.is_main()
    tcfg = trainer_config(cfg.trainer)
    if not isinstance(cfg.seed, int) or isinstance(cfg.seed, bool):
        raise UserError(f"seed={cfg.seed} must be a whole number")
    seed_everything(cfg.seed, tcfg.deterministic)
    device = select_device(tcfg.device)
    if cfg.mode == "train":
        result = train(cfg, run_dir, main, device)
    elif cfg.mode == "eval":
        result = eval_checkpoint(cfg, run_dir, device)
    elif cfg.mode == "predict":
        result = predict(cfg, run_dir, device)
    else:
        raise UserError(f"mode='{cfg.mode}' is not one of train, eval, predict")
    if main:
        (run_dir / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def train(cfg: DictConfig, run_dir: Path, main: bool, device: torch.device) -> dict[str, Any]:
    stages = stage_configs(cfg, command_line_keys())
    _check_test_model(stages[-1][1])
    last_path = run_dir / "checkpoints" / "last.pt"
    resume = None
    if cfg.get("resume"):
        if not last_path.is_file():
            raise UserError(f"nothing to resume in {run_dir}: {last_path} does not exist")
        resume = ckpt.load(last_path)
    counters = Counters(**resume["counters"]) if resume else Counters()
    if resume is not None:
        _check_resumable(OmegaConf.create(resume["config"]), stages, counters.stage_index, counters.stage_done)

    logger_nodes = (cfg.get("logger") or {}).items() if main else []  # `~logger` on the command line: none
    loggers = [build(node, f"logger.{key}", run_dir=run_dir) for key, node in logger_nodes]
    for logger in loggers:
        if resume:
            logger.resume(counters.global_step)

    t0 = time.monotonic()
    prev_best, stage, fit_result = None, None, None
    # Ctrl-C or SIGTERM: last.pt at the end of the current step, then exit with the resume command (cli.job)
    with GracefulInterrupt(enabled=dist.world_size() == 1) as interrupt:
        for index, (name, scfg) in enumerate(stages):
            best_path = run_dir / "checkpoints" / ("best.pt" if index == len(stages) - 1 else f"best-{name}.pt")
            if index < counters.stage_index or (index == counters.stage_index and counters.stage_done):
                prev_best = best_path  # finished before the interruption
                continue
            resuming = resume is not None and index == counters.stage_index
            if not resuming:
                counters = Counters(stage_index=index, global_step=counters.global_step,
                                    earlier_stages_seconds=counters.earlier_stages_seconds + counters.train_seconds)
            stage = build_stage(scfg, name, index, len(stages), run_dir, main, loggers, prev_best, resuming)
            if resuming:
                stage.data.load_state_dict(resume["data"])
            fit_result = fit(stage, device, resume if resuming else None, counters, interrupt)
            counters = fit_result.counters
            in_memory = stage.tcfg.fast_dev_run  # it writes no checkpoint for the next stage to start from
            prev_best = {k: v.clone() for k, v in stage.net.state_dict().items()} if in_memory else best_path
            if interrupt.requested:  # during the stage's last validation: stop before the next stage or the test
                raise KeyboardInterrupt

    result: dict[str, Any] = {"task": cfg.get("task_name"), "status": "ok", "run_dir": str(run_dir)}
    final_best = run_dir / "checkpoints" / "best.pt"
    if fit_result is not None:
        result.update(monitor=fit_result.monitor, best=fit_result.best, best_epoch=fit_result.best_epoch,
                      best_step=fit_result.best_step, steps=counters.global_step, stop_reason=fit_result.stop_reason)
    elif resume is not None:  # every stage had finished (killed during the test): the record is in last.pt
        tracker = resume["tracker"]
        result.update(monitor=tracker.get("monitor"), best=tracker["best"], best_epoch=tracker.get("best_epoch"),
                      best_step=tracker.get("best_step"), steps=counters.global_step, stop_reason=counters.stop_reason)
    if final_best.is_file():
        result["best_ckpt"] = str(final_best)
    # training time over every stage and every resume; train_seconds is this process, data set-up and test included
    result["fit_seconds"] = round(counters.earlier_stages_seconds + counters.train_seconds, 1)
    if stage is None:  # resumed a run whose every stage had finished: rebuild the last one for the test
        name, scfg = stages[-1]
        stage = build_stage(scfg, name, len(stages) - 1, len(stages), run_dir, main, loggers, prev_best,
                            resuming=True)  # (its config.yaml stays the one it trained with)
    tcfg = stage.tcfg
    if tcfg.test_after_fit and stage.data.has_split("test") and (final_best.is_file() or tcfg.fast_dev_run):
        if final_best.is_file() and not tcfg.fast_dev_run:
            stage.net.load_state_dict(ckpt.load(final_best)["net"])
        net = _with_test_options(stage, tcfg.test_model) if tcfg.test_model else stage.net
        loader = stage.data.loader("test", rank=dist.rank(), world_size=dist.world_size(),
                                   limit=1 if tcfg.fast_dev_run else tcfg.limit_test_batches)
        test = {f"test/{k}": v for k, v in evaluate(net.to(device), loader, device, tcfg.precision,
                                                    split="test").items()}
        net.head.on_validation_end("test", run_dir if main else None)
        for logger in loggers:
            logger.log(test, stage=stage.name, epoch=counters.epoch, step=counters.step,
                       global_step=counters.global_step)
        result["test"] = test
        if tcfg.test_model:
            result["test_model"] = tcfg.test_model
    result["train_seconds"] = round(time.monotonic() - t0, 1)

    for logger in loggers:
        logger.close()
    if main:
        csv_logger = next((lg for lg in loggers if isinstance(lg, CSVLogger)), None)
        if csv_logger is not None and csv_logger.rows:
            plot_curves(csv_logger.rows, run_dir / "curves.png")
        rows = {"run": str(run_dir)}
        if fit_result is not None and fit_result.best is not None:
            rows[f"best {fit_result.monitor}"] = fit_result.best
        rows.update(result.get("test", {}))
        rows["time (s)"] = f"{result['train_seconds']:,.0f}"  # not the 4 decimals of a metric
        summary_table(f"{cfg.get('task_name')}: done", rows)
    return result


# where the first weights come from, which last.pt replaces on a resume. (Not `pretrained`: torchvision builds another
# architecture for some weights, e.g. inception_v3's transform_input, a ViT's image_size.)
INIT_ONLY_MODEL_KEYS = ("weights_path",)


def _check_resumable(saved: DictConfig, stages: list[tuple[str, DictConfig]], index: int, done: bool) -> None:
    """A resume continues the run that wrote last.pt: the same task and model, and for a finished stage the same
    budget (a larger one would be silently ignored). Checked before anything is written."""
    if index >= len(stages):
        raise UserError(f"resume: last.pt is from stage {index + 1}, but the config now has {len(stages)} stage(s)")
    name, current = stages[index]
    if saved.get("task_name") not in (None, current.get("task_name")):
        raise UserError(f"resume: this run is task={saved.task_name}, not task={current.get('task_name')}")
    raw = OmegaConf.to_container(current.model, resolve=False)
    changed = [f"model.{k}: {saved.model.get(k)} -> {v}" for k, v in raw.items()
               if not (isinstance(v, str) and "${" in v) and saved.model.get(k) != v  # ${data_info.*} comes later
               and k not in INIT_ONLY_MODEL_KEYS]
    if changed:
        raise UserError(f"resume: the model config changed ({'; '.join(changed)}); a resume continues the same model")
    for key in ("max_epochs", "max_steps"):
        was, now = saved.trainer.get(key), current.trainer.get(key)
        if done and was != now:  # (an unfinished stage: `fit` compares the step counts, which the data also sets)
            raise UserError(f"resume: stage '{name}' finished with trainer.{key}={was} and the config now says {now}, "
                            "which it would ignore; start a new run to train longer")


def _override_model(model_cfg: DictConfig, items: list[tuple[str, Any]]) -> list[str]:
    """Set each (dotted key, value) in a model config, adding keys a saved config predates; returns them as text."""
    applied = []
    for key, value in items:
        OmegaConf.update(model_cfg, key, value, force_add=True)
        applied.append(f"model.{key}={value}")
    return applied


def _load_into(net: TaskNet, state: dict[str, Any], what: str) -> None:
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        raise UserError(f"{what}: {one_line(e)[:300]}") from None



def _check_test_model(final_stage: DictConfig) -> None:
    """Fail before training, not after it, on a `trainer.test_model` key that the final model config lacks."""
    model = final_stage.model
    for key in trainer_config(final_stage.trainer).test_model or {}:
        if key == "_target_" or OmegaConf.select(model, str(key), default=_ABSENT) is _ABSENT:
            raise UserError(f"trainer.test_model: '{key}' is not a key of the final stage's model config "
                            f"(keys: {', '.join(str(k) for k in model if k != '_target_')}); "
                            "trainer.test_model=null tests the model as validated")


def _with_test_options(stage: Stage, options: dict[str, Any]) -> TaskNet:
    """The stage's net rebuilt with `trainer.test_model`'s keys over its model config, holding the same weights."""
    scfg = stage.cfg.copy()
    applied = " ".join(_override_model(scfg.model, list(options.items())))
    log.info(f"test: {applied} (trainer.test_model)")
    later = "training finished and best.pt is kept; `mode=eval ckpt=RUN_DIR` with model.KEY=VALUE overrides tests it"
    try:
        model = build(scfg.model, "model")
    except UserError as e:
        raise UserError(f"trainer.test_model ({applied}): {e}; {later}") from None
    net = TaskNet(model, stage.net.head)
    _load_into(net, stage.net.state_dict(), f"trainer.test_model ({applied}) changes the model's weights, "
                                            f"not only how it infers; {later}")
    return net


def _task_overrides() -> list:
    """This job's command-line overrides, parsed as Hydra parses them."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if not HydraConfig.initialized():
        return []
    return OverridesParser.create().parse_overrides(list(HydraConfig.get().overrides.task))


def _command_line_model_overrides() -> list[tuple[str, Any]]:
    """The `model.KEY=VALUE` overrides of this job's command line."""
    overrides = _task_overrides()
    for o in overrides:
        if o.key_or_group == "model" or (o.key_or_group.startswith("model.") and o.is_delete()):
            log.warning(f"{o.input_line}: ignored; the checkpoint's own model config decides the architecture")
    return [(o.key_or_group.removeprefix("model."), o.value()) for o in overrides
            if o.key_or_group.startswith("model.") and not o.is_delete()]


def _checkpoint_dataset(cfg: DictConfig, saved: DictConfig) -> DictConfig:
    """The dataset config for eval/predict: the checkpoint's settings (image size, rendering, vocabulary options),
    except for paths, which come from this machine's config (`${paths.*}`), and `dataset.*` keys given on this
    command line. A different dataset (`dataset=icwb2` to score a segmenter on SIGHAN files) is taken as it is."""
    current = cfg.dataset
    theirs = saved.get("dataset")
    if not isinstance(theirs, DictConfig) or theirs.get("_target_") != current.get("_target_"):
        return current
    given = {o.key_or_group.split(".")[1] for o in _task_overrides() if o.key_or_group.startswith("dataset.")}
    given |= MACHINE_KEYS  # how this machine loads data, not how the model was trained
    raw = OmegaConf.to_container(current, resolve=False)
    out, taken = current.copy(), []
    with open_dict(out):
        for key, value in raw.items():
            from_here = key in given or (isinstance(value, str) and "${paths." in value) or key not in theirs
            if not from_here and theirs[key] != current[key]:
                out[key] = theirs[key]
                taken.append(f"{key}={theirs[key]}")
    if taken:
        log.info(f"{cfg.mode}: dataset settings as the checkpoint was trained: {' '.join(taken)} "
                 "(dataset.KEY=VALUE on the command line overrides one)")
    return out


def _checkpoint_net(cfg: DictConfig, device: torch.device, run_dir: Path):
    """Model from the checkpoint's own config, dataset settings from it too (see `_checkpoint_dataset`), head from
    the current config (decode options).

    `model.*` overrides given on the command line still apply over the checkpoint's model config: inference options
    such as test-time augmentation (`model.tta_shift=1`) are the user's to choose at evaluation.
    """
    if not cfg.get("ckpt"):
        raise UserError(f"mode={cfg.mode} needs ckpt=PATH (a .pt file or a run directory)")
    state = ckpt.load(cfg.ckpt)
    cfg.ckpt = str(Path(cfg.ckpt).resolve())  # the records (config.yaml, results.json) live in another folder
    if not isinstance(state, dict) or "net" not in state or "config" not in state:
        raise UserError(f"ckpt={cfg.ckpt} is not a checkpoint written by this trainer (a bare state_dict?); give a "
                        "run directory, or its checkpoints/best.pt or last.pt")
    saved = OmegaConf.create(state["config"])
    if saved.get("task_name") not in (None, cfg.get("task_name")):
        raise UserError(f"ckpt={cfg.ckpt} was trained by task={saved.task_name}, not task={cfg.get('task_name')}; "
                        f"give task={saved.task_name} (or leave task= out)")
    applied = _override_model(saved.model, _command_line_model_overrides())
    for text in applied:
        log.info(f"{cfg.mode}: {text} over the checkpoint's model config")
    data_cfg = _checkpoint_dataset(cfg, saved)
    data = build(data_cfg, "dataset")
    data.load_state_dict(state.get("data") or {})
    data.setup("predict" if cfg.mode == "predict" else "eval")
    with open_dict(cfg):
        cfg.data_info = data.info
    if dist.is_main():  # what ran: this command's config with the checkpoint's model and dataset settings
        used = cfg.copy()
        with open_dict(used):
            used.model, used.dataset = saved.model, data_cfg
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(used, resolve=True))
    try:
        model = build(saved.model, "model")
    except WeightsUnavailable as e:  # fetched only to be replaced by the checkpoint's own weights
        raise WeightsUnavailable(f"{e}; for mode={cfg.mode}, model.pretrained=false also works where the weights do "
                                 "not change the architecture (they do for inception_v3, googlenet, SWAG ViTs)") from None
    net = TaskNet(model, build(cfg.head, "head"))
    changed = f" as changed by {' '.join(applied)}" if applied else ""
    _load_into(net, state["net"], f"checkpoint {cfg.ckpt} does not fit the model{changed} or this task's head")
    return data, net.to(device)


def eval_checkpoint(cfg: DictConfig, run_dir: Path, device: torch.device) -> dict[str, Any]:
    data, net = _checkpoint_net(cfg, device, run_dir)
    split = cfg.get("split") or "test"
    if not data.has_split(split):
        raise UserError(f"split='{split}' does not exist for this dataset; it has: {', '.join(data.splits)}")
    tcfg = trainer_config(cfg.trainer)
    loader = data.loader(split, rank=dist.rank(), world_size=dist.world_size(), limit=tcfg.limit_test_batches)
    metrics = {f"{split}/{k}": v for k, v in evaluate(net, loader, device, tcfg.precision, split=split).items()}
    net.head.on_validation_end(split, run_dir if dist.is_main() else None)
    if dist.is_main():
        summary_table(f"eval {cfg.ckpt} on {split}", metrics)
    return {"task": cfg.get("task_name"), "status": "ok", "mode": "eval", "ckpt": str(cfg.ckpt), split: metrics}


@torch.inference_mode()
def predict(cfg: DictConfig, run_dir: Path, device: torch.device) -> dict[str, Any]:
    if dist.world_size() > 1:
        raise UserError("mode=predict runs on one process; launch it without torchrun")
    if not cfg.get("input"):
        raise UserError("mode=predict needs input=PATH (a file or folder of new inputs, or - for standard input)")
    output = cfg.get("output") or str(run_dir / "predictions.txt")
    if output != "-":  # a place it cannot write to is found before predicting, not after
        try:
            existed = Path(output).exists()
            Path(output).parent.mkdir(parents=True, exist_ok=True)
            open(output, "a").close()
            if not existed:
                Path(output).unlink()
        except OSError as e:
            raise UserError(f"cannot write output={output}: {e.strerror}; give a writable file path, or - for "
                            "standard output") from None
    data, net = _checkpoint_net(cfg, device, run_dir)
    if str(cfg.input) == "-" and not data.reads_stdin:
        raise UserError(f"input=- (standard input) is for text; task={cfg.get('task_name')} reads images: give "
                        "input=FILE or input=FOLDER")
    dataset = data.predict_dataset(str(cfg.input))
    loader = data.loader("predict", dataset=dataset)
    net.eval()
    precision = trainer_config(cfg.trainer).precision
    predictions: list[Any] = []
    for batch in loader:
        batch = to_device(batch, device)
        with autocast_context(device, precision):
            outputs = net.model(batch["x"])
        predictions.extend(net.head.decode(outputs, batch))
    if output == "-":
        data.write_predictions(dataset, predictions, sys.stdout)
        sys.stdout.flush()
    else:
        with open(output, "w", encoding="utf-8") as f:
            data.write_predictions(dataset, predictions, f)
        log.info(f"wrote {len(predictions)} predictions to {output}")
    return {"task": cfg.get("task_name"), "status": "ok", "mode": "predict",
            "output": output if output == "-" else str(Path(output).resolve()),
            "count": len(predictions)}
