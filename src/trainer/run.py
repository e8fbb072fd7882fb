"""What one job does, by `mode`: train (the stages in order, then test), eval (a checkpoint on a split), predict."""
from __future__ import annotations

import json
import logging
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf, open_dict

from . import checkpoint as ckpt
from . import distributed as dist
from . import inference
from .callbacks import GracefulInterrupt
from .config import trainer_config
from .errors import UserError, WeightsUnavailable, one_line
from .invocation import Invocation
from .loggers import CSVLogger, plot_curves
from .loop import train_stage
from .progress import summary_table
from .resume import ResumePoint
from .stages import Handoff, Stage, TaskNet, build, build_stage, stage_configs
from .state import Counters
from .trust import check_config

log = logging.getLogger("trainer")
_ABSENT = object()


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def run(cfg: DictConfig, run_dir: Path, invocation: Invocation = Invocation()) -> dict[str, Any]:
    """Run one job; returns the summary also written to <run_dir>/results.json."""
    tcfg = trainer_config(cfg.trainer)
    if not isinstance(cfg.seed, int) or isinstance(cfg.seed, bool):
        raise UserError(f"seed={cfg.seed} must be a whole number")
    seed_everything(cfg.seed, tcfg.deterministic)
    device = dist.select_device(tcfg.device)
    if dist.is_main():
        write_environment(run_dir, device)
    if cfg.mode == "train":
        result = train(cfg, run_dir, device, invocation)
    elif cfg.mode == "eval":
        result = eval_checkpoint(cfg, run_dir, device, invocation)
    elif cfg.mode == "predict":
        result = predict(cfg, run_dir, device, invocation)
    else:
        raise UserError(f"mode='{cfg.mode}' is not one of train, eval, predict")
    if dist.is_main():
        (run_dir / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def environment(device: torch.device) -> dict[str, Any]:
    """What reproducing a run elsewhere needs besides its config: the command, the code (git commit and whether the
    tree had changes, for a checkout; the installed version otherwise), the versions of the libraries that change
    numbers, and the device."""
    import platform
    import shlex
    from importlib import metadata

    def version(dist_name: str) -> str | None:
        try:
            return metadata.version(dist_name)
        except metadata.PackageNotFoundError:
            return None

    import hydra
    import omegaconf
    import torchvision

    # the modules' own versions: torch's says which build ran (2.14.1+cu130 or +cpu), which its metadata does not
    versions = {"stagefit": version("stagefit"), "torch": torch.__version__, "torchvision": torchvision.__version__,
                "hydra-core": hydra.__version__, "omegaconf": omegaconf.__version__, "numpy": np.__version__,
                "python": platform.python_version()}
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        where = f"{device} ({name}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()})"
    else:
        where = f"{device} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    argv = [sys.executable, "-m", "trainer", *sys.argv[1:]] if sys.argv[0].endswith("__main__.py") else sys.argv
    return {"command": " ".join(shlex.quote(a) for a in argv), "cwd": os.getcwd(),
            "git": _git_state(), "versions": versions, "device": where, "world_size": dist.world_size(),
            "platform": platform.platform(), "host": platform.node(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %z")}


def _git_state() -> dict[str, Any] | None:
    """The commit of the checkout the code runs from, and whether it had uncommitted changes; None for an install
    from a wheel (or where git is missing)."""
    import subprocess

    root = Path(__file__).resolve().parents[2]
    if not ((root / "pyproject.toml").is_file() and (root / "src" / "trainer").is_dir()):
        return None  # not a checkout: the installed version says what ran
    try:
        def git(*args: str) -> str:
            return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10,
                                  check=True).stdout.strip()

        if Path(git("rev-parse", "--show-toplevel")).resolve() != root:
            return None
        return {"commit": git("rev-parse", "HEAD"),
                "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError):
        return None


def write_environment(run_dir: Path, device: torch.device) -> None:
    """env.json in the run folder; a resume keeps the earlier starts' records under "earlier"."""
    path = run_dir / "env.json"
    record = environment(device)
    if path.is_file():
        try:
            before = json.loads(path.read_text())
            record["earlier"] = before.pop("earlier", []) + [before]
        except ValueError:
            pass
    path.write_text(json.dumps(record, indent=2) + "\n")


# ---- train --------------------------------------------------------------------------------------------------------
def train(cfg: DictConfig, run_dir: Path, device: torch.device, invocation: Invocation) -> dict[str, Any]:
    stages = stage_configs(cfg, invocation.pinned_keys())
    _check_test_model(stages[-1][1])
    resume = ResumePoint.load(run_dir) if cfg.get("resume") else None
    if resume is not None:
        resume.check(stages)
    counters = resume.counters if resume is not None else Counters()
    logger_nodes = (cfg.get("logger") or {}).items() if dist.is_main() else []  # `~logger` on the command line: none
    loggers = [build(node, f"logger.{key}", run_dir=run_dir) for key, node in logger_nodes]
    for logger in loggers:
        if resume is not None:
            logger.resume(counters.global_step)

    t0 = time.monotonic()
    handoff, stage, fit_result = None, None, None
    # Ctrl-C or SIGTERM: last.pt at the end of the current step, then exit with the resume command (cli.job)
    with GracefulInterrupt() as interrupt:
        for index, (name, scfg) in enumerate(stages):
            best_path = run_dir / "checkpoints" / ("best.pt" if index == len(stages) - 1 else f"best-{name}.pt")
            if resume is not None and resume.finished(index):
                handoff = Handoff(best_path=best_path)  # finished before the interruption
                continue
            state = resume.state if resume is not None and resume.continues(index) else None
            if state is None:
                counters = counters.next_stage(index)
            stage = build_stage(scfg, name, index, len(stages), run_dir, loggers, device, handoff, counters, state)
            fit_result = train_stage(stage, device, state, counters, interrupt)
            counters = fit_result.counters
            handoff = _handoff(stage)
            if interrupt.agreed():  # during the stage's last validation: stop before the next stage or the test
                raise KeyboardInterrupt

    result: dict[str, Any] = {"task": cfg.get("task_name"), "status": "ok", "run_dir": str(run_dir)}
    if fit_result is not None:
        result.update(monitor=fit_result.monitor, best=fit_result.best, best_epoch=fit_result.best_epoch,
                      best_step=fit_result.best_step, steps=counters.global_step, stop_reason=fit_result.stop_reason)
    elif resume is not None:  # every stage had finished (killed during the test): the record is in last.pt
        result.update(resume.summary())
    final_best = run_dir / "checkpoints" / "best.pt"
    if final_best.is_file():
        result["best_ckpt"] = str(final_best)
    # training time over every stage and every resume; train_seconds is this process, data set-up and test included
    result["fit_seconds"] = round(counters.earlier_stages_seconds + counters.train_seconds, 1)
    if stage is None:  # resumed a run whose every stage had finished: rebuild the last one for the test
        name, scfg = stages[-1]
        stage = build_stage(scfg, name, len(stages) - 1, len(stages), run_dir, loggers, device, handoff, counters,
                            resume.state, record=False)  # (its config.yaml stays the one it trained with)
    if stage.tcfg.test_after_fit and stage.data.has_split("test") and (final_best.is_file() or handoff.weights):
        result.update(_final_test(stage, handoff, counters, device, run_dir))
    result["train_seconds"] = round(time.monotonic() - t0, 1)

    for logger in loggers:
        logger.close()
    if dist.is_main():
        csv_logger = next((lg for lg in loggers if isinstance(lg, CSVLogger)), None)
        if csv_logger is not None and csv_logger.rows:
            plot_curves(csv_logger.rows, run_dir / "curves.png", monitor=result.get("monitor"))
        rows = {"run": str(run_dir)}
        if result.get("best") is not None:
            rows[f"best {result['monitor']}"] = result["best"]
        rows.update(result.get("test", {}))
        rows["time (s)"] = f"{result['train_seconds']:,.0f}"  # not the 4 decimals of a metric
        summary_table(f"{cfg.get('task_name')}: done", rows)
    return result


def _handoff(stage: Stage) -> Handoff:
    if stage.tcfg.save_checkpoints:
        return Handoff(best_path=stage.best_path, data_state=stage.data.state_dict())
    # no checkpoint written (fast_dev_run): the next stage and the test take the final weights from memory
    return Handoff(weights={k: v.clone() for k, v in stage.net.state_dict().items()},
                   data_state=stage.data.state_dict())


def _final_test(stage: Stage, handoff: Handoff, counters: Counters, device: torch.device,
                run_dir: Path) -> dict[str, Any]:
    """The final stage's best weights on the test split (with `trainer.test_model`'s inference options)."""
    tcfg = stage.tcfg
    weights, _ = handoff.load_weights()
    stage.net.load_state_dict(weights)
    net = _with_test_options(stage, tcfg.test_model) if tcfg.test_model else stage.net
    loader = stage.data.loader("test", rank=dist.rank(), world_size=dist.world_size(), limit=tcfg.limit_test_batches)
    test = {f"test/{k}": v for k, v in inference.score(net.to(device), loader, device, tcfg.precision, "test").items()}
    net.head.on_validation_end("test", run_dir if dist.is_main() else None)
    for logger in stage.loggers:
        logger.log(test, stage=stage.name, epoch=counters.epoch, step=counters.step, global_step=counters.global_step)
    return {"test": test, **({"test_model": tcfg.test_model} if tcfg.test_model else {})}


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


# ---- eval and predict: a checkpoint ---------------------------------------------------------------------------------
def _checkpoint_dataset(final: DictConfig, saved: DictConfig, given: set[str], mode: str) -> DictConfig:
    """The dataset config for eval/predict: the checkpoint's settings (image size, rendering, vocabulary options),
    except the DataModule's machine keys (workers, caches, downloads: how this machine reads the data), paths
    (`${paths.*}`, this machine's), and `dataset.*` keys given on this command line. A different dataset
    (`dataset=icwb2` to score a segmenter on SIGHAN files) is taken as it is."""
    current = final.dataset
    theirs = saved.get("dataset")
    if not isinstance(theirs, DictConfig) or theirs.get("_target_") != current.get("_target_"):
        return current
    machine = getattr(get_class(current._target_), "machine_keys", frozenset())  # (the current config: trusted)
    raw = OmegaConf.to_container(current, resolve=False)
    out, taken = current.copy(), []
    with open_dict(out):
        for key, value in raw.items():
            here = key in given or key in machine or (isinstance(value, str) and "${paths." in value) \
                or key not in theirs
            if not here and theirs[key] != current[key]:
                out[key] = theirs[key]
                taken.append(f"{key}={theirs[key]}")
    if taken:
        log.info(f"{mode}: dataset settings as the checkpoint was trained: {' '.join(taken)} "
                 "(dataset.KEY=VALUE on the command line overrides one)")
    return out


def _checkpoint_net(cfg: DictConfig, device: torch.device, run_dir: Path, invocation: Invocation):
    """The DataModule and the net of a checkpoint, for eval and predict.

    The model comes from the checkpoint's own config (with `model.*` overrides of this command line over it:
    inference options such as test-time augmentation, `model.tta_shift=1`, are the user's to choose); the dataset's
    settings from it too (see `_checkpoint_dataset`), and its state (vocabulary, class names) before `setup`; the
    head from this config's final stage (decode options). Nothing the checkpoint names is called unless trusted.
    """
    if not cfg.get("ckpt"):
        raise UserError(f"mode={cfg.mode} needs ckpt=PATH (a .pt file or a run directory)")
    state = ckpt.load(cfg.ckpt)
    cfg.ckpt = str(Path(cfg.ckpt).resolve())  # the records (config.yaml, results.json) live in another folder
    if not isinstance(state, dict) or "net" not in state or not isinstance(state.get("config"), str):
        raise UserError(f"ckpt={cfg.ckpt} is not a checkpoint written by this trainer (a bare state_dict?); give a "
                        "run directory, or its checkpoints/best.pt or last.pt")
    try:
        saved = OmegaConf.create(state["config"])
    except Exception as e:  # noqa: BLE001 - whatever the text is, it is not our config
        raise UserError(f"ckpt={cfg.ckpt}: its config is not readable YAML ({type(e).__name__})") from None
    check_config(saved, f"ckpt={cfg.ckpt}")
    if saved.get("task_name") not in (None, cfg.get("task_name")):
        raise UserError(f"ckpt={cfg.ckpt} was trained by task={saved.task_name}, not task={cfg.get('task_name')}; "
                        f"give task={saved.task_name} (or leave task= out)")
    for line in invocation.ignored_for_checkpoint("model"):
        log.warning(f"{line}: ignored; the checkpoint's own model config decides the architecture")
    applied = _override_model(saved.model, invocation.section_overrides("model"))
    for text in applied:
        log.info(f"{cfg.mode}: {text} over the checkpoint's model config")
    final = stage_configs(cfg, invocation.pinned_keys())[-1][1]  # a staged task is used as its last stage
    data_cfg = _checkpoint_dataset(final, saved, {k for k, _ in invocation.section_overrides("dataset")}, cfg.mode)
    data = build(data_cfg, "dataset")
    data.load_state_dict(state.get("data") or {})
    data.setup("predict" if cfg.mode == "predict" else "eval")
    with open_dict(final):
        final.data_info = data.info
    if dist.is_main():  # what ran: this command's config with the checkpoint's model and dataset settings
        used = cfg.copy()
        with open_dict(used):
            used.model, used.dataset, used.head = saved.model, data_cfg, final.head
            used.data_info = data.info
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(used, resolve=True))
    try:
        model = build(saved.model, "model")
    except WeightsUnavailable as e:  # fetched only to be replaced by the checkpoint's own weights
        raise WeightsUnavailable(f"{e}; for mode={cfg.mode}, model.pretrained=false also works where the weights do "
                                 "not change the architecture (they do for inception_v3, googlenet, SWAG ViTs)") from None
    net = TaskNet(model, build(final.head, "head"))
    changed = f" as changed by {' '.join(applied)}" if applied else ""
    _load_into(net, state["net"], f"checkpoint {cfg.ckpt} does not fit the model{changed} or this task's head")
    return data, net.to(device), final


def eval_checkpoint(cfg: DictConfig, run_dir: Path, device: torch.device, invocation: Invocation) -> dict[str, Any]:
    data, net, final = _checkpoint_net(cfg, device, run_dir, invocation)
    split = cfg.get("split") or "test"
    if not data.has_split(split):
        raise UserError(f"split='{split}' does not exist for this dataset; it has: {', '.join(data.splits)}")
    tcfg = trainer_config(final.trainer)
    loader = data.loader(split, rank=dist.rank(), world_size=dist.world_size(), limit=tcfg.limit_test_batches)
    metrics = {f"{split}/{k}": v for k, v in inference.score(net, loader, device, tcfg.precision, split).items()}
    net.head.on_validation_end(split, run_dir if dist.is_main() else None)
    if dist.is_main():
        summary_table(f"eval on {split}", {"checkpoint": str(cfg.ckpt), **metrics, "run": str(run_dir)})
    return {"task": cfg.get("task_name"), "status": "ok", "mode": "eval", "ckpt": str(cfg.ckpt), split: metrics}


def predict(cfg: DictConfig, run_dir: Path, device: torch.device, invocation: Invocation) -> dict[str, Any]:
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
    data, net, final = _checkpoint_net(cfg, device, run_dir, invocation)
    if str(cfg.input) == "-" and not data.reads_stdin:
        raise UserError(f"input=- (standard input) is for text; task={cfg.get('task_name')} reads images: give "
                        "input=FILE or input=FOLDER")
    dataset = data.predict_dataset(str(cfg.input))
    loader = data.loader("predict", dataset=dataset)
    predictions = inference.predict(net, loader, device, trainer_config(final.trainer).precision)
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
