"""Hydra's task function: one job in its run folder, from start to its one-line end.

It holds the run folder (one process at a time), records the command, runs the job (`trainer.run`), and turns every
way it can end into one line and a record: a user's error (exit 2, and for a NaN or a diverging loss a command that
goes on), a Ctrl-C (exit 130 and the resume command), an internal error (exit 1, its traceback in run.log). In a
sweep a failed job is recorded and the sweep goes on; `trainer.cli.main` reads what the jobs left here.
"""
from __future__ import annotations

import contextlib
import os
import shlex
import sys
import time
import traceback
from pathlib import Path

failures: list[str] = []  # the messages of the jobs of this process that failed
sweep_dir: Path | None = None  # set by the first job of a multirun
_run_folder_lock = None  # the open lock file of the run folder this process works in


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

    global sweep_dir
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    if multirun:
        sweep_dir = Path(hc.sweep.dir)
    try:
        _hold_run_folder(run_dir)
    except UserError as e:  # another process is running in this folder: leave its records alone
        if dist.is_main():
            print_error(str(e))
        failures.append(str(e))
        if multirun:
            return {"status": "failed", "error": str(e)}
        shutdown_quietly()
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
        failures.append(message)
        if multirun:
            if isinstance(e, KeyboardInterrupt):
                raise  # the rest of the sweep is not run; main() writes the summary of the jobs so far
            return {"status": "failed", "error": message}
        if not dist.is_main():  # torchrun stops the other ranks once one exits: let rank 0 say why first
            time.sleep(2.0)
        shutdown_quietly()
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


def shutdown_quietly() -> None:
    """Leave the process group on the way out of a failure: a broken group must not turn the one-line error into a
    traceback."""
    from . import distributed as dist

    with contextlib.suppress(Exception):
        dist.shutdown(wait=False)
