"""Resume, in one place: what the run was (its command line, its folder), where it stopped and which of its stages
are finished (`last.pt`), resolved once.

`resume=RUN_DIR` re-runs the run's original overrides into RUN_DIR (`resume_overrides`, before Hydra composes the
config), from the folder the run was started in; then `ResumePoint` reads `last.pt`, checks that the config still
describes the run that wrote it, and tells the stage loop which stages to skip and which one to continue. The
training state itself is restored by `TrainState.load_state_dict`, the DataModule's by its `load_state_dict`.
"""
from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from . import checkpoint as ckpt
from . import distributed as dist
from .errors import UserError
from .state import Counters
from .trust import check_replayed_overrides

#: Model keys that only say where the first weights come from, which last.pt replaces on a resume. (Not `pretrained`:
#: torchvision builds another architecture for some weights, e.g. inception_v3's transform_input, a ViT's image_size.)
INIT_ONLY_MODEL_KEYS = ("weights_path",)


# ---- before Hydra: the run's command line -----------------------------------------------------------------------
def resume_overrides(overrides: list[str], stamp: str) -> tuple[list[str], Path | None]:
    """`resume=RUN_DIR`: the original run's overrides, then the new ones, writing into RUN_DIR again; and RUN_DIR."""
    given = [o for o in overrides if o.startswith("resume=")]
    if not given or given[-1] in ("resume=null", "resume="):
        return overrides, None
    run_dir = Path(given[-1].split("=", 1)[1]).resolve()
    if run_dir.is_file():  # a checkpoint path inside the run directory
        run_dir = run_dir.parent.parent
    saved = run_dir / ".hydra" / "overrides.yaml"
    if not saved.is_file():
        raise UserError(f"resume={run_dir}: not a run directory (no .hydra/overrides.yaml); give the run's folder")
    results = run_dir / "results.json"
    if results.is_file() and '"status": "ok"' in results.read_text():
        raise UserError(f"resume={run_dir}: that run has finished (results.json); nothing to resume. To test it "
                        f"again: python -m trainer mode=eval ckpt={run_dir}")
    original = [str(o) for o in OmegaConf.load(saved) if not str(o).startswith("resume=")]
    check_replayed_overrides(original, f"resume={run_dir}")
    _work_where_it_started(run_dir)
    rest = [o for o in overrides if not o.startswith("resume=")]
    # the resume's own Hydra record goes beside the run's, which stays the original (the next resume reads it)
    record = f"hydra.output_subdir=.hydra/resume-{stamp}"
    return [*original, *rest, f"resume={run_dir}", f"hydra.run.dir={run_dir}", record], run_dir


def _work_where_it_started(run_dir: Path) -> None:
    """Change to the folder the run was started in, so that its relative paths (paths.data_dir=../data, the
    default `data`) mean what they meant then; a resume from another folder read other data or none."""
    with contextlib.suppress(Exception):  # an unreadable record: stay here
        started = Path(OmegaConf.load(run_dir / ".hydra" / "hydra.yaml").hydra.runtime.cwd)
        if started.is_dir() and started.resolve() != Path.cwd().resolve():
            os.chdir(started)
            if dist.is_main():  # (under torchrun, once)
                print(f"resume: working in {started}, where the run was started (its relative paths are from there)",
                      file=sys.stderr)


# ---- in the job: where the run stopped ----------------------------------------------------------------------------
@dataclass
class ResumePoint:
    state: dict[str, Any]  # last.pt
    counters: Counters

    @classmethod
    def load(cls, run_dir: Path) -> ResumePoint:
        path = run_dir / "checkpoints" / "last.pt"
        if not path.is_file():
            raise UserError(f"nothing to resume in {run_dir}: {path} does not exist")
        state = ckpt.load(path)
        return cls(state=state, counters=Counters(**state["counters"]))

    def finished(self, index: int) -> bool:
        """Whether stage `index` had finished before the interruption."""
        return index < self.counters.stage_index or (index == self.counters.stage_index and self.counters.stage_done)

    def continues(self, index: int) -> bool:
        return index == self.counters.stage_index and not self.counters.stage_done

    def check(self, stages: list[tuple[str, DictConfig]]) -> None:
        """The config still describes the run that wrote last.pt: the same task and model, and for a finished stage
        the same budget (a larger one would be silently ignored). Checked before anything is written."""
        saved = OmegaConf.create(self.state["config"])
        index, done = self.counters.stage_index, self.counters.stage_done
        if index >= len(stages):
            raise UserError(f"resume: last.pt is from stage {index + 1}, but the config now has {len(stages)} "
                            "stage(s)")
        name, current = stages[index]
        if saved.get("task_name") not in (None, current.get("task_name")):
            raise UserError(f"resume: this run is task={saved.task_name}, not task={current.get('task_name')}")
        raw = OmegaConf.to_container(current.model, resolve=False)
        changed = [f"model.{k}: {saved.model.get(k)} -> {v}" for k, v in raw.items()
                   if not (isinstance(v, str) and "${" in v) and saved.model.get(k) != v  # ${data_info.*} comes later
                   and k not in INIT_ONLY_MODEL_KEYS]
        if changed:
            raise UserError(f"resume: the model config changed ({'; '.join(changed)}); a resume continues the same "
                            "model")
        if not done:  # last.pt's optimiser and schedule state would overrule these: refused, never recorded unused
            moved = _changed(saved, current, ("optim", "sched", "seed"))
            if moved:
                raise UserError(f"resume: {'; '.join(moved)}, but a resume continues last.pt's optimiser, schedule "
                                f"and seed, so the change would be recorded and not used. To train on with it, start "
                                f"a new run from this one's weights: add init.checkpoint=<run>/checkpoints/last.pt "
                                f"(stages.{name}.init.checkpoint in a staged task) instead of resume=")
        for key in ("max_epochs", "max_steps"):
            was, now = saved.trainer.get(key), current.trainer.get(key)
            if done and was != now:  # (an unfinished stage: its step plan is compared, which the data also sets)
                raise UserError(f"resume: stage '{name}' finished with trainer.{key}={was} and the config now says "
                                f"{now}, which it would ignore; start a new run to train longer")

    def summary(self) -> dict[str, Any]:
        """The record of a run whose every stage had finished (killed during the final test)."""
        tracker = self.state["tracker"]
        return {"monitor": tracker.get("monitor"), "best": tracker["best"], "best_epoch": tracker.get("best_epoch"),
                "best_step": tracker.get("best_step"), "steps": self.counters.global_step,
                "stop_reason": self.counters.stop_reason}


def _changed(saved: DictConfig, current: DictConfig, keys: tuple[str, ...]) -> list[str]:
    """`KEY: was -> now` for the leaves of `keys` that differ between the saved (resolved) and the current config."""
    out = []
    def plain(node: Any) -> Any:
        return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node

    for key in keys:
        try:
            was, now = plain(saved.get(key)), plain(current.get(key))
        except Exception:  # noqa: BLE001 - an interpolation only a later step can resolve: not comparable here
            continue
        out += [f"{path}: {a} -> {b}" for path, a, b in _leaf_diff(was, now, key)]
    return out


def _leaf_diff(a: Any, b: Any, path: str):
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            yield from _leaf_diff(a.get(k), b.get(k), f"{path}.{k}")
    elif a != b:
        yield path, a, b
