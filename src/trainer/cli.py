"""`python -m trainer [task=NAME] [key=value ...]`: Hydra composes the config, `trainer.job` runs it.

Before Hydra takes over, this module does what Hydra's own entry point would do less kindly:
  - `--help`, `--version` and `--cfg ... --resolve` print without running anything (`cli_info`);
  - every override (each job of a sweep) is composed and checked once up front (`checks`), so a mistake is one line;
  - `resume=RUN_DIR` re-runs the original command line of RUN_DIR, into RUN_DIR (`resume`), and `resume=SWEEP_DIR`
    a whole sweep (`sweeper`);
  - under torchrun, rank 0 makes the run folder and gives its stamp to every rank (one run folder, never one shared
    by two runs), and the other ranks neither log nor write.
"""
from __future__ import annotations

import itertools
import os
import sys
import time
from pathlib import Path

from . import job as job_state
from .checks import validate
from .cli_info import print_help, print_resolved, version_line
from .invocation import CONF_DIR, CONF_PACKAGE
from .job import job, shutdown_quietly

PASS_THROUGH_FLAGS = ("--cfg", "-c", "--resolve", "--package", "-p", "--info", "-i", "--hydra-help", "--version",
                      "--shell-completion", "-sc", "--config-path", "-cp", "--config-name", "-cn", "--config-dir",
                      "-cd", "--experimental-rerun")
#: Hydra flags followed by a value (`--cfg job`), and --info's optional one.
VALUE_FLAGS = ("--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd",
               "--experimental-rerun", "--shell-completion", "-sc")
#: Flags that print the composed config: the overrides are checked first, as for a run.
SHOW_CONFIG_FLAGS = ("--cfg", "-c", "--resolve", "--package", "-p")
INFO_CHOICES = ("all", "config", "defaults", "defaults-tree", "plugins", "searchpath")


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
        if job_state.sweep_dir is None:  # during start-up (imports, composing the config): no run to resume yet
            _exit_interrupted("during start-up, before the run began")
        from . import distributed as dist  # a sweep: Hydra's end-of-sweep callback will not run, so the table is ours
        from .sweep import write_summary

        if dist.is_main():
            write_summary(job_state.sweep_dir)
        shutdown_quietly()
        from .sweeper import resume_command

        _exit_interrupted(f"the sweep stopped: the jobs after the last one above did not run; to resume the sweep "
                          f"(skip what finished, resume what was cut off, run the rest): {resume_command(job_state.sweep_dir)}")


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

        failed = max(len(job_state.failures), failed_jobs())  # (a parallel launcher's jobs fail in other processes)
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
