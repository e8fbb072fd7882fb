"""Sweeps that resume: Hydra's grid and an Optuna search, each numbering its jobs by their place in the sweep.

Hydra's sweepers number the jobs of each invocation from 0, so running a sweep again into its folder overwrites
what the first attempt did, and nothing in Hydra continues an interrupted multirun (facebookresearch/hydra#3328).
These two sweepers plan every job against what its folder (`<sweep dir>/<job>/`) already holds:

  - finished (`results.json` says ok): skipped, its record kept;
  - cut off (no `results.json`, or an interrupted one) with a `checkpoints/last.pt`: resumed from it, as
    `resume=RUN_DIR` resumes one run (the same trust and config checks; its Hydra record goes to
    `.hydra/resume-<stamp>/`, so the job's own `.hydra/overrides.yaml` stays the one later resumes compare);
  - failed, or cut off before its first checkpoint: run again from the start;
  - never started: run.

A job folder whose saved overrides are not this job's (another sweep in the same folder) stops the sweep before
anything runs. Every job is launched with its folder named in its overrides (`hydra.sweep.subdir=<job>`), so any
launcher (basic, joblib, submitit) runs the remaining jobs in one batch and each lands in its own folder.

`GridSweeper` runs the jobs of Hydra's basic sweeper (the product of the sweep overrides and
`hydra.sweeper.params`), in its order. `OptunaSweeper` asks Optuna for trials (`hydra.sweeper.params` in the
search-space grammar of hydra-optuna-sweeper: `choice(...)`, `range(...)`, `interval(...)`, `tag(log, ...)`); the
study lives in a store (by default SQLite in the sweep folder, `optuna.db`), job folder = trial number, and
`n_trials` is the size of the search, so running the same command again finishes it: a trial that was cut off is
run again under its own number, with its own parameters, from its last.pt.

Under torchrun every rank runs the sweeper; rank 0 alone reads the folders and the study, and broadcasts each
batch, so all ranks launch the same jobs in the same order (one folder and one config per job).
"""
from __future__ import annotations

import fcntl
import json
import logging
import math
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig, OmegaConf

from . import distributed as dist
from .errors import UserError

log = logging.getLogger("trainer")

#: Override keys that say how a job is run, not what it is: left out when a job's saved overrides are compared.
HOW_KEYS = ("resume",)


# ---- one job: what its folder holds ---------------------------------------------------------------------------------
@dataclass
class Job:
    num: int  # its folder under the sweep dir, and its trial number in a search
    overrides: list[str]
    action: str = "run"  # run | skip | resume | rerun
    note: str = ""
    params: dict[str, Any] = field(default_factory=dict)  # a trial's parameters


def override_map(overrides: Sequence[str]) -> dict[str, str]:
    """KEY -> VALUE of a list of overrides, the last one of a key winning, as Hydra applies them."""
    out = {}
    for o in overrides:
        key, _, value = str(o).partition("=")
        if key.lstrip("+~") not in HOW_KEYS:
            out[key] = value
    return out


def saved_overrides(job_dir: Path) -> list[str] | None:
    path = job_dir / ".hydra" / "overrides.yaml"
    return [str(o) for o in OmegaConf.load(path)] if path.is_file() else None


def lock_holder(job_dir: Path) -> str | None:
    """The pid of a live process working in `job_dir` (job._hold_run_folder's lock), or None."""
    path = job_dir / ".lock"
    if not path.is_file():
        return None
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            return f.read().strip() or "?"
        fcntl.flock(f, fcntl.LOCK_UN)
    return None


def plan_job(sweep_dir: Path, num: int, overrides: list[str]) -> Job:
    """What to do with job `num` of a sweep, from what its folder holds (see the module docstring)."""
    job_dir = sweep_dir / str(num)
    job = Job(num, list(overrides))
    saved = saved_overrides(job_dir)
    if saved is None:  # never started (or Hydra made the folder and the sweep stopped)
        return job
    if override_map(saved) != override_map(overrides):
        raise UserError(f"{job_dir} ran `{' '.join(saved)}`, but job {num} of this sweep is "
                        f"`{' '.join(overrides)}`: a sweep folder continues the same sweep; give another "
                        "hydra.sweep.dir for a new one")
    holder = lock_holder(job_dir)
    if holder is not None:
        raise UserError(f"{job_dir} is in use by another process (pid {holder}): is this sweep still running? "
                        "Wait for it to end, or stop it, before resuming")
    results = job_dir / "results.json"
    status = None
    if results.is_file():
        try:
            status = json.loads(results.read_text()).get("status")
        except ValueError:  # a write cut short
            status = None
    last = job_dir / "checkpoints" / "last.pt"
    if status == "ok":
        job.action, job.note = "skip", "finished"
    elif status == "failed":
        job.action, job.note = "rerun", "failed before: run again from the start"
    elif last.is_file():
        job.action, job.note = "resume", "cut off: resumes from its last.pt"
    else:
        job.action, job.note = "rerun", "cut off before its first checkpoint: run again from the start"
    return job


def quote(value: str) -> str:
    """`value` as an override value Hydra parses back to the same string (a path may hold spaces or quotes)."""
    if re.fullmatch(r"[\w/.\-]+", value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def stop(message: str) -> None:
    """One line and exit 2, from inside Hydra (which would print a traceback for an exception)."""
    from .cli import fail
    from .job import shutdown_quietly

    shutdown_quietly()
    fail(message)


# ---- what the sweepers share ----------------------------------------------------------------------------------------
class _Resumable:
    """Planning and launching jobs by folder number; the subclasses decide which jobs there are."""

    config: DictConfig
    launcher: Any

    def setup(self, *, hydra_context: Any, task_function: Any, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context,
                                                                task_function=task_function, config=config)

    def _sweep_dir(self) -> Path:
        return Path(str(self.config.hydra.sweep.dir)).absolute()  # (resolving it makes it: cli._run_stamp)

    def _stamp(self) -> str:
        return time.strftime("%Y-%m-%d_%H-%M-%S")

    def _check_composes(self, jobs: list[list[str]]) -> None:
        """Rank 0, before anything runs: each job's config composes (Hydra's basic sweeper does the same); a typo in
        a sweep's params (which the CLI's own check, on the command line, does not see) is one line."""
        from hydra.errors import HydraException
        from omegaconf.errors import OmegaConfBaseException

        from .checks import explain_compose_error

        for overrides in jobs:
            try:
                self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            except (HydraException, OmegaConfBaseException, ValueError) as e:
                raise UserError(f"a job of this sweep does not compose: {explain_compose_error(e, overrides)}"
                                ) from None

    def _check_launcher(self) -> None:
        """A SLURM job is one process of ours: several tasks per node would each run the whole job, as rank 0, in
        the same folder (DDP across nodes is torchrun's, see README)."""
        launcher = self.config.hydra.launcher
        tasks = OmegaConf.select(launcher, "tasks_per_node", default=1) or 1
        if str(launcher.get("_target_", "")).endswith("SlurmLauncher") and tasks > 1:
            raise UserError(f"hydra.launcher.tasks_per_node={tasks}: each job of a sweep on SLURM is one process; "
                            "for several GPUs per job run torchrun inside an sbatch script (README, Sweeps)")

    def _save_record(self, sweep_dir: Path, stamp: str) -> None:
        """multirun.yaml is the sweep's own record, which `resume=SWEEP_DIR` replays: a resume keeps it and writes
        its own beside it. Rank 0 alone (the other ranks' config carries their logging switched off)."""
        if not dist.is_main():
            return
        sweep_dir.mkdir(parents=True, exist_ok=True)
        record = sweep_dir / "multirun.yaml"
        OmegaConf.save(self.config, record if not record.is_file() else sweep_dir / f"multirun-resume-{stamp}.yaml")

    def _launch(self, jobs: list[Job], sweep_dir: Path, stamp: str) -> list[Any]:
        if not jobs:
            return []
        batch = []
        for job in jobs:
            extra = [f"hydra.sweep.dir={quote(str(sweep_dir))}", f"hydra.sweep.subdir={job.num}"]
            if job.action == "resume":
                extra.append(f"resume={quote(str(sweep_dir / str(job.num)))}")
                if self.config.hydra.output_subdir is not None:  # (null on torchrun's other ranks: no record)
                    extra.append(f"hydra.output_subdir=.hydra/resume-{stamp}")
            elif job.action == "rerun" and dist.is_main():
                _set_aside(sweep_dir / str(job.num), stamp)
            batch.append([*job.overrides, *extra])
        return list(self.launcher.launch(batch, initial_job_idx=jobs[0].num))


def _set_aside(job_dir: Path, stamp: str) -> None:
    """A job run again from the start keeps its earlier attempt's checkpoints apart, so that a kill before its first
    checkpoint cannot leave the earlier attempt's last.pt to be resumed."""
    checkpoints = job_dir / "checkpoints"
    if checkpoints.is_dir() and any(checkpoints.iterdir()):
        checkpoints.rename(job_dir / f"checkpoints.before-{stamp}")


def _describe(jobs: list[Job], sweep_dir: Path, total: int, what: str = "job") -> str | None:
    """One line on what a resumed sweep does with each job, or None for a fresh sweep."""
    if all(j.action == "run" for j in jobs) and len(jobs) == total:
        return None
    groups: dict[str, list[int]] = {}
    for j in jobs:
        groups.setdefault(j.note or "not run yet: runs", []).append(j.num)
    parts = [f"{what}{'s' if len(nums) > 1 else ''} {_ranges(nums)} {note}" for note, nums in groups.items()]
    return f"resuming the sweep in {sweep_dir}: " + "; ".join(parts)


def _ranges(nums: list[int]) -> str:
    out, start = [], None
    nums = sorted(nums)
    for i, n in enumerate(nums):
        start = n if start is None else start
        if i + 1 == len(nums) or nums[i + 1] != n + 1:
            out.append(str(start) if start == n else f"{start}-{n}")
            start = None
    return ", ".join(out)


def _print(line: str) -> None:
    if dist.is_main():
        from .sweep import console

        console().print(line, soft_wrap=True)  # (a path in it must stay whole: no line breaks inserted)


# ---- the grid ------------------------------------------------------------------------------------------------------
class GridSweeper(_Resumable):
    """Hydra's basic sweep (every combination of the sweep overrides and `hydra.sweeper.params`, in its order),
    resumable: job k is the k-th combination, in folder k. Subclassed in hydra_plugins.trainer_sweepers, where
    Hydra looks for plugins."""

    def __init__(self, max_batch_size: int | None = None, params: dict[str, str] | None = None):
        self.max_batch_size = max_batch_size
        self.params = dict(params or {})
        self.config: DictConfig | None = None
        self.launcher = None
        self.hydra_context = None

    def job_overrides(self, arguments: list[str]) -> list[list[str]]:
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
        from hydra.core.override_parser.overrides_parser import OverridesParser

        params_conf = [f"{k}={v}" for k, v in self.params.items()] + list(arguments)
        parsed = OverridesParser.create(config_loader=self.hydra_context.config_loader).parse_overrides(params_conf)
        for o in parsed:
            if o.is_sweep_override() and not o.is_discrete_sweep():
                raise UserError(f"'{o.input_line}' is a search space, which a grid cannot list: search it with "
                                "hydra/sweeper=optuna (or an hparams_search=NAME config)")
        return [list(job) for job in BasicSweeper.split_arguments(parsed, None)[0]]

    def sweep(self, arguments: list[str]) -> list[Any]:
        sweep_dir, stamp = self._sweep_dir(), self._stamp()
        plan = None
        if dist.is_main():
            try:
                self._check_launcher()
                jobs = [plan_job(sweep_dir, k, o) for k, o in enumerate(self.job_overrides(arguments))]
                self._check_composes([j.overrides for j in jobs if j.action != "skip"])
                plan = (jobs, _describe(jobs, sweep_dir, len(jobs)))
            except UserError as e:
                plan = str(e)
        plan = dist.broadcast_object(plan)
        if isinstance(plan, str):
            stop(plan)
        jobs, line = plan
        self._save_record(sweep_dir, stamp)
        if line:
            _print(line)
        todo = [j for j in jobs if j.action != "skip"]
        size = self.max_batch_size or len(todo) or 1
        returns = []
        for i in range(0, len(todo), size):
            returns.append(self._launch(todo[i:i + size], sweep_dir, stamp))
        return returns


# ---- the Optuna search -----------------------------------------------------------------------------------------------
def search_space(arguments: list[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """Optuna distributions of the sweep overrides, and the fixed overrides (hydra-optuna-sweeper's grammar:
    choice -> categorical, range -> int or stepped float, interval -> uniform, tag(log, interval) -> log-uniform)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import Transformer
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    from hydra.errors import OverrideParseException

    from .errors import one_line

    try:
        parsed = OverridesParser.create().parse_overrides(arguments)
    except OverrideParseException as e:
        raise UserError(f"cannot parse the search space: {one_line(e)}") from None
    space, fixed = {}, {}
    for o in parsed:
        key = o.get_key_element()
        if not o.is_sweep_override():
            fixed[key] = o.get_value_element_as_str()
            space.pop(key, None)  # a fixed value given later wins over a search space
            continue
        fixed.pop(key, None)
        value = o.value()
        if o.is_choice_sweep() or (o.is_range_sweep() and value.shuffle):
            space[key] = CategoricalDistribution(list(o.sweep_iterator(transformer=Transformer.encode)))
        elif o.is_range_sweep():
            # Hydra's range excludes its stop, Optuna's bounds are inclusive: the last value the range reaches
            last = value.start + value.step * (math.ceil((value.stop - value.start) / value.step) - 1)
            if any(isinstance(v, float) for v in (value.start, value.stop, value.step)):
                space[key] = FloatDistribution(value.start, last, step=value.step)
            else:
                space[key] = IntDistribution(int(value.start), int(last), step=int(value.step))
        elif o.is_interval_sweep():
            log_scale = "log" in value.tags
            if isinstance(value.start, int) and isinstance(value.end, int):
                space[key] = IntDistribution(value.start, value.end, log=log_scale)
            else:
                space[key] = FloatDistribution(float(value.start), float(value.end), log=log_scale)
        else:
            raise UserError(f"'{o.input_line}': this sweep cannot be searched by Optuna")
    return space, fixed


def corners(space: dict[str, Any], fixed: dict[str, str]) -> list[list[str]]:
    """Jobs that try every value a search can give a key that may not compose: each end of a range or interval
    (the others at their low end), each choice of a categorical."""
    from optuna.distributions import CategoricalDistribution

    low = {k: d.choices[0] if isinstance(d, CategoricalDistribution) else d.low for k, d in space.items()}
    jobs = [trial_overrides(low, fixed)]
    for key, d in space.items():
        for value in d.choices[1:] if isinstance(d, CategoricalDistribution) else [d.high]:
            jobs.append(trial_overrides({**low, key: value}, fixed))
    return jobs


def trial_overrides(params: dict[str, Any], fixed: dict[str, str]) -> list[str]:
    return [f"{k}={v}" for k, v in fixed.items()] + [f"{k}={_value(v)}" for k, v in params.items()]


def _value(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    return repr(v) if isinstance(v, float) else str(v)


def monitor_mode(cfg: DictConfig) -> str:
    """max or min: how the run's monitored metric improves, as the run's tracker decides it (the trainer's
    monitor_mode, else the final stage's head's own)."""
    from hydra.utils import get_class

    from .stages import stage_configs

    final = stage_configs(cfg)[-1][1]
    mode = OmegaConf.select(final, "trainer.monitor_mode")
    if mode is None:
        mode = getattr(get_class(final.head._target_), "monitor_mode", "min")
    return mode


class OptunaSweeper(_Resumable):
    """A hyperparameter search with Optuna's ask-and-tell interface: each batch of `n_jobs` trials is launched as
    jobs (in parallel with a parallel launcher), each trial's value is its job's best monitored metric
    (results.json), and a failed job is a failed trial. Subclassed in hydra_plugins.trainer_sweepers."""

    def __init__(self, sampler: Any = None, direction: str = "auto", storage: str | None = None,
                 study_name: str = "search", n_trials: int = 20, n_jobs: int = 1, max_failure_rate: float = 1.0,
                 params: dict[str, str] | None = None):
        self.sampler_cfg, self.direction, self.storage = sampler, direction, storage
        self.study_name, self.n_trials, self.n_jobs = study_name, n_trials, n_jobs
        self.max_failure_rate, self.params = max_failure_rate, dict(params or {})
        self.config: DictConfig | None = None
        self.launcher = None
        self.hydra_context = None

    # -- rank 0: the study --
    def _study(self, sweep_dir: Path, arguments: list[str]):
        try:
            import optuna
        except ImportError:
            raise UserError("hydra/sweeper=optuna needs Optuna: pip install -e '.[sweeps]'") from None
        from hydra.utils import instantiate

        for name, bad in (("n_trials", self.n_trials < 1), ("n_jobs", self.n_jobs < 1),
                          ("max_failure_rate", not 0 <= self.max_failure_rate <= 1)):
            if bad:
                raise UserError(f"hydra.sweeper.{name}={getattr(self, name)} is out of range")
        direction = monitor_mode(self.config) if self.direction == "auto" else self.direction
        direction = {"max": "maximize", "min": "minimize"}.get(direction, direction)
        if direction not in ("maximize", "minimize"):
            raise UserError(f"hydra.sweeper.direction={self.direction} is not auto, maximize or minimize")
        self.space_args = [f"{k}={v}" for k, v in self.params.items()] + list(arguments)
        self.space, self.fixed = search_space(self.space_args)
        if not self.space:
            raise UserError("an Optuna search needs a search space: hydra.sweeper.params (an hparams_search=NAME "
                            "config) or overrides such as optim.lr='tag(log,interval(1e-4,1e-2))'")
        self._check_composes(corners(self.space, self.fixed))
        storage = self.storage or f"sqlite:///{sweep_dir / 'optuna.db'}"
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        try:
            study = optuna.create_study(study_name=self.study_name, storage=storage, direction=direction,
                                        load_if_exists=True)
        except Exception as e:  # noqa: BLE001 - SQLAlchemy's, Optuna's: one line, with the storage named
            from .errors import one_line

            raise UserError(f"cannot open the Optuna storage {storage}: {type(e).__name__}: {one_line(e)}") from None
        if self.sampler_cfg is not None:
            sampler_cfg = self.sampler_cfg
            if OmegaConf.select(sampler_cfg, "seed") is not None and study.trials:
                # a continued search draws on from where it is, not again the draws its first trials had
                sampler_cfg = OmegaConf.merge(sampler_cfg, {"seed": sampler_cfg.seed + len(study.trials)})
            study.sampler = instantiate(sampler_cfg)
            if not isinstance(study.sampler, optuna.samplers.BaseSampler):
                raise UserError(f"hydra.sweeper.sampler is a {type(study.sampler).__name__}, not an Optuna sampler")
        space = " ".join(sorted(f"{k}={v}" for k, v in override_map(self.space_args).items()))
        before = study.user_attrs.get("search")
        if before is None:
            study.set_user_attr("search", space)
        elif before != space:
            raise UserError(f"the study '{self.study_name}' in {storage} is a search of `{before}`; this one is "
                            f"`{space}`: a search continues the same search; give another hydra.sweep.dir "
                            "(or hydra.sweeper.study_name) for a new one")
        if study.direction.name.lower() != direction:
            raise UserError(f"the study '{self.study_name}' in {storage} {study.direction.name.lower()}s; this "
                            f"search would {direction}")
        self.storage_url = storage
        return study

    def _first_batch(self, study, sweep_dir: Path) -> tuple[list[Job], str | None]:
        """Trials left RUNNING by an interrupted search (their job folders tell whether to resume or rerun)."""
        from optuna.trial import TrialState

        jobs = []
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            job = plan_job(sweep_dir, t.number, trial_overrides(t.params, self.fixed))
            job.params = dict(t.params)
            if job.action == "skip":  # finished, but the search stopped before it was told
                job.note = "finished"
            jobs.append(job)
        done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL,
                                                            TrialState.PRUNED)))
        line = None
        if jobs or done:
            line = (f"continuing the search in {sweep_dir} (study '{self.study_name}' in {self.storage_url}): "
                    f"{done} of {self.n_trials} trials finished")
            if jobs:
                line += "; " + _describe(jobs, sweep_dir, -1, what="trial").split(": ", 1)[1]
        return jobs, line

    def _ask(self, study, count: int, sweep_dir: Path) -> list[Job]:
        jobs = []
        for _ in range(count):
            trial = study.ask(fixed_distributions=self.space)
            job = plan_job(sweep_dir, trial.number, trial_overrides(trial.params, self.fixed))
            if job.action != "run":  # a folder left by another study or search under this number
                raise UserError(f"{sweep_dir / str(trial.number)} exists, but trial {trial.number} is new in the "
                                f"study: give the search a folder of its own (hydra.sweep.dir)")
            job.params = dict(trial.params)
            jobs.append(job)
        return jobs

    def _tell(self, study, jobs: list[Job], sweep_dir: Path) -> list[int]:
        from optuna.trial import TrialState

        failed = []
        for job in jobs:
            path = sweep_dir / str(job.num) / "results.json"
            try:
                result = json.loads(path.read_text()) if path.is_file() else {}
            except ValueError:
                result = {}
            best = result.get("best")
            if result.get("status") == "ok" and isinstance(best, (int, float)) and math.isfinite(best):
                study.tell(job.num, float(best))
            elif result.get("status") in ("ok", "failed"):
                study.tell(job.num, state=TrialState.FAIL)
                failed.append(job.num)
            # no results.json: the job was cut off; the trial stays RUNNING and a resumed search runs it again
        return failed

    def _finished(self, study) -> tuple[int, int]:
        from optuna.trial import TrialState

        trials = study.get_trials(deepcopy=False)
        done = sum(t.state in (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED) for t in trials)
        return done, sum(t.state == TrialState.FAIL for t in trials)

    def _record(self, study, sweep_dir: Path) -> str:
        """optimization_results.yaml (as hydra-optuna-sweeper writes it), and the closing line."""
        from optuna.trial import TrialState

        trials = study.get_trials(deepcopy=False)
        states = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState if
                  any(t.state == s for t in trials)}
        record: dict[str, Any] = {"name": "optuna", "study_name": self.study_name, "storage": self.storage_url,
                                  "direction": study.direction.name.lower(), "trials": states}
        line = f"search: {len(trials)} trials ({', '.join(f'{n} {s}' for s, n in states.items())})"
        if states.get("complete"):
            best = study.best_trial
            record.update(best_trial=best.number, best_value=best.value,
                          best_params=dict(best.params))
            line += (f"; best: trial {best.number}, {best.value:.4g} with "
                     + " ".join(f"{k}={_value(v)}" for k, v in best.params.items()))
        OmegaConf.save(OmegaConf.create(record), sweep_dir / "optimization_results.yaml")
        return line

    def _next_batch(self, study, pending: list[Job], sweep_dir: Path) -> list[Job]:
        """Rank 0: the trials to run next: those an interrupted search left (in batches of n_jobs), then new ones
        until the study has n_trials finished; [] when the search is done."""
        from optuna.trial import TrialState

        self._tell(study, [j for j in pending if j.action == "skip"], sweep_dir)  # finished, never told
        pending[:] = [j for j in pending if j.action != "skip"]
        batch, pending[:] = pending[:self.n_jobs], pending[self.n_jobs:]
        if pending:
            return batch
        done, failed = self._finished(study)
        if self.max_failure_rate < 1 and done and failed / done > self.max_failure_rate:
            raise UserError(f"{failed} of {done} trials failed, more than hydra.sweeper.max_failure_rate="
                            f"{self.max_failure_rate}: the search stops")
        # RUNNING: this batch's cut-off trials, and any another process is running on the same study
        running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
        room = min(self.n_jobs - len(batch), self.n_trials - done - running)
        return batch + (self._ask(study, room, sweep_dir) if room > 0 else [])

    def sweep(self, arguments: list[str]) -> list[Any]:
        sweep_dir, stamp = self._sweep_dir(), self._stamp()
        study, pending, start = None, [], None
        if dist.is_main():
            try:
                self._check_launcher()
                study = self._study(sweep_dir, arguments)
                pending, line = self._first_batch(study, sweep_dir)
                start = line or ""
            except UserError as e:
                start = e
        start = dist.broadcast_object(start)
        if isinstance(start, UserError):
            stop(str(start))
        self._save_record(sweep_dir, stamp)
        if start:
            _print(start)
        returns = []
        while True:
            jobs: list[Job] | str = []
            if dist.is_main():
                try:
                    jobs = self._next_batch(study, pending, sweep_dir)
                except UserError as e:
                    jobs = str(e)
            jobs = dist.broadcast_object(jobs)
            if isinstance(jobs, str):
                if dist.is_main():
                    from .progress import print_error

                    print_error(jobs)
                break
            if not jobs:
                break
            returns.append(self._launch(jobs, sweep_dir, stamp))
            if dist.is_main():
                self._tell(study, jobs, sweep_dir)
        if dist.is_main():
            _print(self._record(study, sweep_dir))
        return returns


# ---- before Hydra: `resume=SWEEP_DIR` --------------------------------------------------------------------------------
#: Hydra overrides a resumed sweep does not replay: where it writes (given anew) and what the CLI sets per rank.
NOT_REPLAYED = ("hydra.sweep.dir", "hydra.sweep.subdir", "hydra.run.dir", "hydra.output_subdir")


def is_sweep_dir(path: Path) -> bool:
    return (path / "multirun.yaml").is_file() and not (path / ".hydra" / "overrides.yaml").is_file()


def resume_sweep_overrides(overrides: list[str], flags: list[str]) -> tuple[list[str], list[str], Path | None]:
    """`resume=SWEEP_DIR`: the sweep's own overrides (its task and Hydra overrides, from multirun.yaml), then the new
    ones, into SWEEP_DIR again, as a multirun; and SWEEP_DIR. Anything else is returned as it came (`resume=RUN_DIR`
    of one run, or of one job of a sweep, is `resume.resume_overrides`'s)."""
    from .trust import check_replayed_overrides

    given = [o for o in overrides if o.startswith("resume=")]
    if not given or given[-1] in ("resume=null", "resume="):
        return overrides, flags, None
    sweep_dir = Path(given[-1].split("=", 1)[1]).resolve()
    if not is_sweep_dir(sweep_dir):
        if ("-m" in flags or "--multirun" in flags) and (sweep_dir / ".hydra" / "overrides.yaml").is_file():
            raise UserError(f"resume={sweep_dir} is one run (or one job of a sweep): resume it without -m")
        return overrides, flags, None
    record = OmegaConf.load(sweep_dir / "multirun.yaml")
    task = [str(o) for o in OmegaConf.select(record, "hydra.overrides.task", default=[]) or []]
    hydra = [str(o) for o in OmegaConf.select(record, "hydra.overrides.hydra", default=[]) or []]
    original = [o for o in task if not o.startswith("resume=")]
    original += [o for o in hydra if not o.lstrip("+~").split("=", 1)[0].startswith(NOT_REPLAYED)]
    check_replayed_overrides(original, f"resume={sweep_dir}")
    rest = [o for o in overrides if not o.startswith("resume=")]
    flags = flags if ("-m" in flags or "--multirun" in flags) else [*flags, "-m"]
    return [*original, *rest, f"hydra.sweep.dir={quote(str(sweep_dir))}"], flags, sweep_dir


def resume_command(sweep_dir: Path) -> str:
    launcher = (f"torchrun --nproc_per_node={dist.world_size()} -m trainer" if dist.world_size() > 1
                else "python -m trainer")
    return f"{launcher} resume={sweep_dir}"


if __name__ == "__main__":  # pragma: no cover
    sys.exit("trainer.sweeper is used by Hydra: python -m trainer -m ... (see README, Sweeps)")
