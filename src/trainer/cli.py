"""`python -m trainer [task=NAME] [key=value ...]`: Hydra composes the config, `trainer.run` does the job.

Before Hydra takes over, this module does what Hydra's own entry point would do less kindly:
  - `--help` lists the tasks and config groups;
  - every override (each job of a sweep) is composed once up front, so an unknown task, an unknown key or a bad
    value fails with one line that names what is valid, not with Hydra's multi-line report;
  - `resume=RUN_DIR` re-runs the original command line of RUN_DIR, into RUN_DIR;
  - under torchrun, rank 0 picks the run directory's time stamp for every rank (one run directory, not one per
    rank) and the other ranks neither log nor write.
"""
from __future__ import annotations

import contextlib
import itertools
import os
import shlex
import sys
import time
import traceback
from pathlib import Path

from .invocation import CONF_DIR, CONF_PACKAGE

PASS_THROUGH_FLAGS = ("--cfg", "-c", "--resolve", "--package", "-p", "--info", "-i", "--hydra-help", "--version",
                      "--shell-completion", "-sc", "--config-path", "-cp", "--config-name", "-cn", "--config-dir",
                      "-cd", "--experimental-rerun")
#: Hydra flags followed by a value (`--cfg job`), and --info's optional one.
VALUE_FLAGS = ("--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd",
               "--experimental-rerun", "--shell-completion", "-sc")
#: Flags that print the composed config: the overrides are checked first, as for a run.
SHOW_CONFIG_FLAGS = ("--cfg", "-c", "--resolve", "--package", "-p")
INFO_CHOICES = ("all", "config", "defaults", "defaults-tree", "plugins", "searchpath")
_failures: list[str] = []
_sweep_dir: Path | None = None  # set by the first job of a multirun


def split_flags(argv: list[str]) -> tuple[list[str], list[str]]:
    """Hydra's flags (with their values, wherever they stand) apart from the KEY=VALUE overrides."""
    flags, overrides, i = [], [], 0
    while i < len(argv):
        arg = argv[i]
        takes_value = arg in VALUE_FLAGS or (arg in ("--info", "-i") and i + 1 < len(argv)
                                             and argv[i + 1] in INFO_CHOICES)
        if arg.startswith("-"):
            flags += argv[i : i + 2] if takes_value else [arg]
            i += 2 if takes_value else 1
        else:
            overrides.append(arg)
            i += 1
    return flags, overrides


def fail(message: str, code: int = 2) -> None:
    if os.environ.get("RANK", "0") == "0":  # under torchrun every rank fails alike: one line, from rank 0
        print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def _run_stamp(parent: str | None = None) -> str:
    """The run directory's time stamp, fixed for the process at its first use.

    Given the folder it goes in, the run directory is also created here, so that two runs started in the same
    second get `<stamp>` and `<stamp>_1` instead of sharing (and overwriting) one folder. Under torchrun rank 0
    does that and the other ranks take its stamp (a broadcast at the first use, which Hydra makes on every rank
    when it resolves the run folder): one run folder per run, and never one shared by two runs."""
    from . import distributed as dist

    stamp = os.environ.get("TRAINER_RUN_STAMP")
    if not stamp:
        stamp = _new_stamp(parent) if dist.rank() == 0 else None
        stamp = dist.broadcast_object(stamp)
        os.environ["TRAINER_RUN_STAMP"] = stamp  # one value per process, however often it is resolved
    return stamp


def _new_stamp(parent: str | None) -> str:
    stamp = base = time.strftime("%Y-%m-%d_%H-%M-%S")
    for n in itertools.count(1) if parent else ():
        try:
            (Path(parent) / stamp).mkdir(parents=True)  # atomic: exactly one process creates it
            break
        except FileExistsError:
            stamp = f"{base}_{n}"
    return stamp


def register_resolvers() -> None:
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("run_stamp"):
        OmegaConf.register_new_resolver("run_stamp", _run_stamp)
    if not OmegaConf.has_resolver("mode_dir"):  # eval and predict runs apart from the training runs they read
        OmegaConf.register_new_resolver("mode_dir", lambda mode: "" if mode == "train" else f"/{mode}")


def register_plugins() -> None:
    """The project's sweepers, registered by hand: Hydra finds plugins by listing the `hydra_plugins` package's
    folders, and an editable install serves ours through an import hook that such a listing does not see (a wheel
    install is found either way)."""
    from hydra.core.plugins import Plugins
    from hydra_plugins.trainer_sweepers import GridSweeper, OptunaSweeper

    for plugin in (GridSweeper, OptunaSweeper):
        Plugins.instance().register(plugin)


# ---- --help ---------------------------------------------------------------------------------------------------------
def print_help() -> None:
    conf = CONF_DIR
    print("usage: python -m trainer [task=NAME] [KEY=VALUE ...]        one run\n"
          "       python -m trainer -m [task=NAME] KEY=V1,V2 ...         a sweep (Hydra multirun)\n"
          "       torchrun --nproc_per_node=N -m trainer [...]           DistributedDataParallel\n"
          "       python -m trainer resume=RUN_DIR                       resume a killed run\n"
          "       python -m trainer task=NAME mode=eval ckpt=PATH [split=test]\n"
          "       python -m trainer task=NAME mode=predict ckpt=PATH input=PATH|- [output=PATH|-]\n")
    defaults = _root_defaults()
    print("tasks (task=NAME), * the default (what `python -m trainer` alone runs):")
    for path in sorted((conf / "task").glob("*.yaml")):
        name = f"{path.stem}*" if path.stem == defaults.get("task") else path.stem
        print(f"  {name:<20} {_describe(path)}")
    print("\nconfig groups (GROUP=OPTION; * marks the default, which a task may change):")
    for group in sorted(p for p in conf.iterdir() if p.is_dir() and p.name not in ("task", "hydra")):
        options = [f"{p.stem}*" if p.stem == defaults.get(group.name) else p.stem
                   for p in sorted(group.glob("*.yaml"))]
        print(f"  {group.name:<10} {', '.join(options)}")
    print("\nany value: KEY=VALUE (optim.lr=3e-4 trainer.max_epochs=5); show the composed config: --cfg job\n"
          "(--cfg job --resolve: with every value filled in); list the runs under outputs/: python -m trainer runs;\n"
          "the version: --version; Hydra's own flags: --hydra-help")


def version_line() -> str:
    """The project's version (the installed distribution's, or pyproject.toml's in a checkout that is not
    installed), with the versions of what it runs on; imports nothing heavy."""
    from importlib import metadata

    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "not installed"

    ours = version("stagefit")
    if ours == "not installed":
        pyproject = CONF_DIR.parent.parent / "pyproject.toml"  # (conf/ sits beside it in a checkout)
        for line in pyproject.read_text().splitlines() if pyproject.is_file() else []:
            if line.startswith("version"):
                ours = line.split("=", 1)[1].strip().strip('"') + " (checkout)"
                break
    return (f"trainer (stagefit) {ours}; torch {version('torch')}, torchvision {version('torchvision')}, "
            f"hydra-core {version('hydra-core')}, python {sys.version.split()[0]}")


def print_resolved(flags: list[str], overrides: list[str]) -> None:
    """`--cfg job|hydra|all --resolve [--package KEY]`: the composed config with every interpolation filled in,
    except `${data_info.*}` (the DataModule's facts, known only once the data is read), which stay as written and are
    listed in a comment. Creates no run folder."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from .errors import UserError

    def value_of(*names: str) -> str | None:
        for i, flag in enumerate(flags[:-1]):
            if flag in names:
                return flags[i + 1]
        return None

    which = value_of("--cfg", "-c") or "job"
    if which not in ("job", "hydra", "all"):
        raise UserError(f"--cfg {which}: give --cfg job, --cfg hydra or --cfg all")
    os.environ.setdefault("TRAINER_RUN_STAMP", time.strftime("%Y-%m-%d_%H-%M-%S"))  # resolving makes no folder
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module=CONF_PACKAGE, version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    GlobalHydra.instance().clear()
    before = HydraConfig.instance().cfg
    HydraConfig.instance().set_config(cfg)  # ${hydra:...} resolves as in a run
    try:
        if which == "job":
            with open_struct_off(cfg):
                del cfg["hydra"]
        left: list[str] = []
        out = _resolved(cfg, "", left)
    finally:
        HydraConfig.instance().cfg = before
    if which == "hydra":
        out, left = {"hydra": out["hydra"]}, [k for k in left if k.startswith("hydra.")]
    package = value_of("--package", "-p")
    if package:
        out = OmegaConf.select(OmegaConf.create(out), package)
        if out is None:
            raise UserError(f"--package {package}: no such key in the config")
        out = OmegaConf.to_container(out) if OmegaConf.is_config(out) else out
        shown = OmegaConf.to_yaml(OmegaConf.select(cfg, package, throw_on_resolution_failure=False) or {},
                                  resolve=False) if OmegaConf.is_config(OmegaConf.select(
                                      cfg, package, throw_on_resolution_failure=False)) else ""
        left = [k for k in left if k.startswith(f"{package}.") or f"${{{k}}}" in shown]
    text = OmegaConf.to_yaml(out) if isinstance(out, (dict, list)) else f"{out}\n"
    if left:
        text = (f"# left as written, known only as the run starts (data_info: once the data is read; the run "
                f"folder's config.yaml has them): {', '.join(left)}\n") + text
    print(text, end="")


@contextlib.contextmanager
def open_struct_off(cfg):
    from omegaconf import OmegaConf

    OmegaConf.set_struct(cfg, False)
    try:
        yield
    finally:
        OmegaConf.set_struct(cfg, True)


def _resolved(node, path: str, left: list[str]):
    """A plain copy of `node` with each interpolation resolved where it can be, else kept as written."""
    from omegaconf import DictConfig, ListConfig
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(node, DictConfig):
        keys = list(node.keys())
        items = [(k, f"{path}.{k}" if path else str(k)) for k in keys]
    elif isinstance(node, ListConfig):
        items = [(i, f"{path}[{i}]") for i in range(len(node))]
    else:
        return node
    out: dict | list = {} if isinstance(node, DictConfig) else []
    for key, where in items:
        try:
            value = node[key]
            value = _resolved(value, where, left)
        except OmegaConfBaseException:
            value = node._get_node(key)._value()  # the text as written: ${data_info.num_classes}
            if not str(value).startswith("${data_info."):
                left.append(where)
            else:
                left.append(str(value)[2:-1])
        except Exception:  # noqa: BLE001 - a resolver that cannot run here (a missing runtime value)
            value = node._get_node(key)._value()
            left.append(where)
        if isinstance(out, dict):
            out[key] = value
        else:
            out.append(value)
    return out


def _root_defaults() -> dict[str, str]:
    """GROUP -> option chosen by conf/config.yaml's defaults list."""
    from omegaconf import OmegaConf

    entries = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "config.yaml").defaults)
    return {str(k): str(v) for e in entries if isinstance(e, dict) for k, v in e.items()}


def _describe(path: Path) -> str:
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line.startswith("#") and "@package" not in line:
            return line.lstrip("# ")
    return ""


# ---- validation of overrides before Hydra runs ---------------------------------------------------------------------
def _job_override_sets(overrides: list[str], multirun: bool, limit: int = 200) -> list[list[str]]:
    """The overrides of each job a sweep would launch (the one job of a plain run)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    parsed = parser.parse_overrides(overrides)
    if not multirun:
        return [overrides]
    choices = []
    for o in parsed:
        if o.is_interval_sweep():  # a search space (hydra/sweeper=optuna): composed at both ends
            choices.append([f"{o.get_key_element()}={v}" for v in (o.value().start, o.value().end)])
        elif o.is_sweep_override():
            choices.append([f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()])
        else:
            choices.append([o.input_line])
    return [list(c) for c in itertools.islice(itertools.product(*choices), limit)]


def validate(overrides: list[str], multirun: bool, untrusted: str | None = None) -> None:
    """Compose each job's config once; raise UserError with one line on the first that fails. With `untrusted` (the
    overrides replayed from a run folder), every `_target_` of the composed config, Hydra's included, must be one the
    allowlist trusts (see `trust`)."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException, MissingConfigException, OverrideParseException
    from omegaconf.errors import OmegaConfBaseException

    from .errors import UserError, one_line
    from .stages import check_stages
    from .trust import check_config

    try:
        job_sets = _job_override_sets(overrides, multirun)
    except OverrideParseException as e:
        raise UserError(f"cannot parse the overrides: {one_line(e)}") from None
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module=CONF_PACKAGE, version_base="1.3"):
        for job in job_sets:
            try:
                cfg = compose("config", overrides=job, return_hydra_config=untrusted is not None)
            except MissingConfigException as e:
                group = (e.missing_cfg_file or "").rpartition("/")[0] or "config"
                name = (e.missing_cfg_file or "").rpartition("/")[2]
                options = ", ".join(e.options or []) or "none"
                raise UserError(f"unknown {group} '{name}'; available: {options}") from None
            except (HydraException, OmegaConfBaseException) as e:
                raise UserError(_explain_compose_error(e, job)) from None
            except ValueError as e:  # Hydra's own, e.g. `debug=null`: "Config group override must be a string"
                raise UserError(f"cannot compose the config: {one_line(e)}; to drop a group's choice write ~GROUP, "
                                "to pick another GROUP=OPTION") from None
            if untrusted is not None:
                check_config(cfg, untrusted, interpolations=True)
            check_stages(cfg)
            _check_output_dir(cfg.paths.output_dir)
            if cfg.mode not in ("train", "eval", "predict"):
                raise UserError(f"bad value for 'mode': '{cfg.mode}' is not one of train, eval, predict")
    GlobalHydra.instance().clear()


def _check_output_dir(path: str) -> None:
    from .errors import UserError

    target = Path(path).absolute()
    missing = [p for p in (target, *target.parents) if not p.exists()]
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create paths.output_dir={path}: {e.strerror}; give a writable folder") from None
    for folder in missing:  # checked, not kept: `--cfg job` and a refused run leave no outputs/ behind (Hydra
        with contextlib.suppress(OSError):  # makes the run folder when it runs)
            folder.rmdir()


def _explain_compose_error(e: Exception, job: list[str]) -> str:
    from omegaconf.errors import ConfigKeyError

    from .errors import one_line

    cause = e.__cause__ or e
    if isinstance(cause, ConfigKeyError) or "not in struct" in str(cause):
        key = getattr(cause, "full_key", None) or ""
        parent, _, leaf = key.rpartition(".")
        valid = _keys_under(parent, [o for o in job if not _sets_under(o, parent)])
        where = f"'{parent}'" if parent else "the root config"
        return (f"unknown config key '{key}'; keys in {where}: {valid}; "
                f"to add a new key write +{key}=VALUE")
    return one_line(str(e) + (f" ({cause})" if cause is not e else ""))


def _sets_under(override: str, parent: str) -> bool:
    """Whether `override` sets keys inside `parent`: a dotted key or a {..} dict, not `parent=GROUP_OPTION`."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    o = OverridesParser.create().parse_override(override)
    return o.key_or_group.startswith(f"{parent}.") or (o.key_or_group == parent and isinstance(o.value(), dict))


def _keys_under(parent: str, job: list[str]) -> str:
    from hydra import compose
    from omegaconf import OmegaConf

    try:
        cfg = compose("config", overrides=job)
        node = OmegaConf.select(cfg, parent) if parent else cfg
        return ", ".join(str(k) for k in node.keys()) if hasattr(node, "keys") else "-"
    except Exception:
        return "?"


# ---- the Hydra job ---------------------------------------------------------------------------------------------------
def job(cfg) -> dict:
    """Hydra's task function: run one job, turning every failure into one line (and a failed record in a sweep)."""
    import json

    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from . import distributed as dist
    from .errors import NonFiniteLossError, UserError
    from .invocation import Invocation
    from .progress import print_error, print_interrupted
    from .run import run

    global _sweep_dir
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    if multirun:
        _sweep_dir = Path(hc.sweep.dir)
    try:
        _hold_run_folder(run_dir)
    except UserError as e:  # another process is running in this folder: leave its records alone
        if dist.is_main():
            print_error(str(e))
        _failures.append(str(e))
        if multirun:
            return {"status": "failed", "error": str(e)}
        _shutdown_quietly()
        sys.exit(2)
    if dist.is_main():  # this job's own overrides (one job of a sweep: its values); a resume adds a line
        with open(run_dir / "command.txt", "a") as f:
            f.write(" ".join(["python -m trainer", *map(shlex.quote, hc.overrides.task)]) + "\n")
    try:
        return run(cfg, run_dir, Invocation.from_hydra())
    except (Exception, KeyboardInterrupt) as e:
        if isinstance(e, NonFiniteLossError):
            message, code = f"{e}{_restart_advice(e, cfg, hc.overrides.task)}", 2
        elif isinstance(e, UserError):
            message, code = str(e), 2
        elif isinstance(e, KeyboardInterrupt):
            code = 130
            if (run_dir / "checkpoints" / "last.pt").is_file():
                launcher = (f"torchrun --nproc_per_node={dist.world_size()} -m trainer" if dist.world_size() > 1
                            else "python -m trainer")
                message = f"resume with: {launcher} resume={run_dir}"
            elif str(e):  # what the interrupted work kept (a render cache that the next run continues)
                message = f"{e}; no checkpoint was written yet: nothing to resume"
            else:
                message = "before the first checkpoint was written: nothing to resume; run it again"
        else:
            message, code = f"{type(e).__name__}: {e} (traceback in {run_dir / 'run.log'})", 1
            with open(run_dir / "run.log", "a") as f:
                f.write("".join(traceback.format_exception(e)))
        asked = isinstance(e, KeyboardInterrupt)  # a Ctrl-C the user asked for is not an error
        if dist.is_main():
            (print_interrupted if asked else print_error)(message)
            with open(run_dir / "run.log", "a") as f:
                f.write(f"{'interrupted' if asked else 'error'}: {message}\n")
            (run_dir / "results.json").write_text(json.dumps(
                {"task": cfg.get("task_name"), "status": "interrupted" if asked else "failed", "error": message},
                indent=2) + "\n")
        _failures.append(message)
        if multirun:
            if isinstance(e, KeyboardInterrupt):
                raise  # the rest of the sweep is not run; main() writes the summary of the jobs so far
            return {"status": "failed", "error": message}
        if not dist.is_main():  # torchrun stops the other ranks once one exits: let rank 0 say why first
            time.sleep(2.0)
        _shutdown_quietly()
        sys.exit(code)


_run_folder_lock = None  # the open lock file of the run folder this process works in


def _hold_run_folder(run_dir: Path) -> None:
    """One process at a time in a run folder (a second `resume=` of a running run is refused), and what a kill
    during a checkpoint write left behind is removed. Rank 0 holds the lock; every rank learns the outcome."""
    import fcntl

    from . import distributed as dist
    from .errors import UserError

    global _run_folder_lock
    holder = None
    if dist.is_main():
        f = open(run_dir / ".lock", "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or "?"
            f.close()
        else:
            f.seek(0)
            f.truncate()
            f.write(f"{os.getpid()}\n")
            f.flush()
            _run_folder_lock = f
            for tmp in (run_dir / "checkpoints").glob(".*.tmp*"):  # a write that a kill cut short
                tmp.unlink(missing_ok=True)
    holder = dist.broadcast_object(holder)
    if holder is not None:
        raise UserError(f"{run_dir} is in use by another process (pid {holder}); wait for it to end, or stop it, "
                        "before resuming")


def _restart_advice(e, cfg, overrides: list[str]) -> str:
    """For a NaN or a diverging loss: a command that works, a new run from the last good weights and data state at a
    lower rate (a resume would replay the same rate and fail the same way). In a staged task it starts at the stage
    that failed (the earlier ones are set to null)."""
    if not e.last_good:
        return ""
    from omegaconf import OmegaConf

    from .checkpoint import load

    lr = cfg.get("optim", {}).get("lr")
    names = [str(k) for k, v in (cfg.get("stages") or {}).items() if v is not None]
    prefix, skipped = "", []
    if names:
        index = load(e.last_good)["counters"]["stage_index"]
        prefix, skipped = f"++stages.{names[index]}.", [f"stages.{n}=null" for n in names[:index]]
        lr = OmegaConf.select(cfg, f"stages.{names[index]}.optim.lr", default=lr)
    lower = f"{lr / 10:g}" if isinstance(lr, (int, float)) else "LOWER"
    dropped = tuple(f"{p}{prefix.lstrip('+')}{k}=" for p in ("", "+", "++")
                    for k in ("optim.lr", "init.checkpoint", "init.data")) + ("resume=",)
    keep = [o for o in overrides if not o.startswith(dropped)]
    command = " ".join(["python -m trainer", *map(shlex.quote, keep), *skipped, f"{prefix}init.checkpoint={e.last_good}",
                        f"{prefix}init.data={e.last_good}", f"{prefix}optim.lr={lower}"])
    return f"; to go on from the last good weights at a lower rate, start a new run: {command}"


def _shutdown_quietly() -> None:
    """Leave the process group on the way out of a failure: a broken group must not turn the one-line error into a
    traceback."""
    from . import distributed as dist

    with contextlib.suppress(Exception):
        dist.shutdown(wait=False)


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["runs"]:  # `python -m trainer runs [FOLDER]`: the runs under outputs/
        from .runs import main as list_runs

        sys.exit(list_runs(args[1:]))
    if "--version" in args and not any(a in args for a in ("--help", "-h")):
        print(version_line())
        return
    try:
        _main(argv)
    except KeyboardInterrupt:
        if _sweep_dir is None:  # during start-up (imports, composing the config): no run to resume yet
            _exit_interrupted("during start-up, before the run began")
        from . import distributed as dist  # a sweep: Hydra's end-of-sweep callback will not run, so the table is ours
        from .sweep import write_summary

        if dist.is_main():
            write_summary(_sweep_dir)
        _shutdown_quietly()
        from .sweeper import resume_command

        _exit_interrupted(f"the sweep stopped: the jobs after the last one above did not run; to resume the sweep "
                          f"(skip what finished, resume what was cut off, run the rest): {resume_command(_sweep_dir)}")


def _exit_interrupted(message: str) -> None:
    """Exit 130 with one line: a Ctrl-C the user asked for is not an error (no red 'error:'), and the line starts
    after any progress bar, so that the prompt lands on a line of its own."""
    if os.environ.get("RANK", "0") == "0":
        from .progress import print_interrupted

        print_interrupted(message)
    sys.exit(130)


def _main(argv: list[str] | None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--help" in argv or "-h" in argv:
        print_help()
        return
    register_resolvers()
    register_plugins()
    from . import distributed as dist
    from .errors import UserError
    from .resume import resume_overrides

    flags, overrides = split_flags(argv)
    multirun = "-m" in flags or "--multirun" in flags

    dist.init_from_env()
    try:
        overrides, flags, replayed_from = _resume_sweep(overrides, flags)
        multirun = multirun or replayed_from is not None
        if replayed_from is None:
            overrides, replayed_from = resume_overrides(overrides, dist.broadcast_object(time.strftime("%Y-%m-%d_%H-%M-%S")))
        overrides = _checkpoint_task(overrides, multirun)
        if not any(f in flags for f in PASS_THROUGH_FLAGS if f not in SHOW_CONFIG_FLAGS):
            validate(overrides, multirun, untrusted=f"resume={replayed_from}" if replayed_from else None)
    except UserError as e:
        fail(str(e))
    if "--resolve" in flags and any(f in flags for f in ("--cfg", "-c")):
        try:  # Hydra's own would stop at ${data_info.*}, known only once the data is read, with a traceback
            print_resolved(flags, overrides)
        except UserError as e:
            fail(str(e))
        return

    if dist.rank() > 0:  # last, so that they win over a resume's record (only rank 0 writes)
        overrides += ["hydra.output_subdir=null", "hydra/job_logging=disabled", "hydra/hydra_logging=disabled"]
    import hydra

    sys.argv = [sys.argv[0], *overrides, *flags]  # flags last: a bare --info must not take an override as its value
    hydra.main(config_path=f"pkg://{CONF_PACKAGE}", config_name="config", version_base="1.3")(job)()
    dist.shutdown()
    if multirun:
        from .sweep import failed_jobs

        failed = max(len(_failures), failed_jobs())  # (a parallel launcher's jobs fail in other processes)
        if failed:
            fail(f"{failed} job(s) of the sweep failed (see the summary above)", code=1)


def _resume_sweep(overrides: list[str], flags: list[str]) -> tuple[list[str], list[str], Path | None]:
    """`resume=SWEEP_DIR` (a multirun folder): the sweep's own command line into that folder again, as a multirun
    that skips the finished jobs and resumes the one cut off (see trainer.sweeper)."""
    if not any(o.startswith("resume=") for o in overrides):
        return overrides, flags, None
    from .sweeper import resume_sweep_overrides

    return resume_sweep_overrides(overrides, flags)


def _checkpoint_task(overrides: list[str], multirun: bool = False) -> list[str]:
    """mode=eval/predict without task=: the task the checkpoint was trained by (not the default, captcha); not for
    a sweep, whose ckpt= may list several."""
    def last(key: str) -> str | None:
        given = [o.split("=", 1)[1] for o in overrides if o.startswith(f"{key}=")]
        return given[-1] if given else None

    if multirun or last("mode") not in ("eval", "predict") or not last("ckpt") or last("task") is not None:
        return overrides
    from omegaconf import OmegaConf

    from .checkpoint import load

    state = load(last("ckpt"))
    try:
        task = OmegaConf.create(state.get("config") or "{}").get("task_name") if isinstance(state, dict) else None
    except Exception:  # noqa: BLE001 - not our config: _checkpoint_net says so in one line
        return overrides
    if task is not None and not (isinstance(task, str) and (CONF_DIR / "task" / f"{task}.yaml").is_file()):
        from .errors import UserError

        raise UserError(f"ckpt={last('ckpt')} names task={task!r}, which is not one of this project's tasks; give "
                        "task=NAME")
    return [f"task={task}", *overrides] if task else overrides
