"""What a checkpoint or a run folder may make us call: configs read from files are data, not code.

`hydra.utils.instantiate` calls whatever a `_target_` names, at any depth of a config, so a config read from a
checkpoint (`mode=eval`/`predict`, which rebuild the model from it) or a run folder (`resume=` replays its
overrides) could call `builtins.open` or `torch.load(weights_only=False)`. Hydra's own blocklist is best effort.

So every `_target_` of such a config, however deeply nested, must resolve to a class or function *defined* in an
allowed module: the project's models, heads, datasets, schedules and loggers, torch's `nn` and `optim`,
torchvision's `models`, and Hydra's installed plugins. The check is on where the object is defined, not on the
spelling of the path, since `trainer.models.seg_fcn.torch.load` spells a project path and reaches `torch.load`.
`TRAINER_TRUSTED_TARGETS` (comma-separated module prefixes) adds a user's own packages.
"""
from __future__ import annotations

import inspect
import os
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from .errors import UserError

ALLOWED_MODULES = (
    "trainer.models", "trainer.datasets", "trainer.schedules", "trainer.loggers", "trainer.sweep",
    "trainer.sweep_report", "torch.nn", "torch.optim", "torchvision.models", "hydra._internal.core_plugins",
    "hydra_plugins", "optuna.samplers",  # (a search's sampler, hydra.sweeper.sampler, replayed by resume=SWEEP_DIR)
)
ENV = "TRAINER_TRUSTED_TARGETS"


def allowed_modules() -> tuple[str, ...]:
    extra = tuple(p.strip().rstrip(".") for p in os.environ.get(ENV, "").split(",") if p.strip())
    return ALLOWED_MODULES + extra


def _inside(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def target_refusal(target: Any) -> str | None:
    """Why `target` may not be called from a config read from a file, or None when it may."""
    from hydra._internal.utils import _locate

    if not isinstance(target, str):
        return "is not a dotted name"
    prefixes = allowed_modules()
    if not _inside(target, prefixes):  # refused before importing anything it names
        return "is outside the modules a checkpoint or run folder may name"
    try:
        obj = _locate(target)
    except Exception as e:  # noqa: BLE001 - any import failure is a refusal, with its reason
        return f"cannot be imported ({type(e).__name__})"
    if not (inspect.isclass(obj) or inspect.isfunction(obj)):
        return "is not a class or function"
    home = getattr(obj, "__module__", "") or ""
    if not _inside(home, prefixes):
        return f"is {home}.{getattr(obj, '__qualname__', '?')}, outside the allowed modules"
    return None


def check_config(node: Any, source: str, interpolations: bool = False) -> None:
    """Refuse, in one line, a config from `source` (a checkpoint, a run folder) with a `_target_` outside the
    allowlist at any depth, or, unless `interpolations`, with an interpolation (which would run resolvers: a saved
    config is written resolved)."""
    for path, target in _targets(node, "", interpolations):
        reason = target_refusal(target)
        if reason:
            where = f"{path}._target_" if path else "_target_"
            raise UserError(f"refused {source}: {where}={target!r} {reason}; configs read from files are data "
                            f"({ENV}=PACKAGE trusts a package of your own)")


#: Override keys that a replayed run folder may not set: they configure Python logging (whose `()` and `class` keys
#: call factories) or where configs are found.
REPLAY_REFUSED = ("hydra.searchpath", "hydra.job_logging", "hydra.hydra_logging", "hydra/job_logging",
                  "hydra/hydra_logging")


def check_replayed_overrides(overrides: list[str], source: str) -> None:
    for override in overrides:
        key = override.lstrip("+~").split("=", 1)[0]
        if key.startswith(REPLAY_REFUSED):
            raise UserError(f"refused {source}: its override '{override}' configures logging or the config search "
                            "path, which a replayed run folder may not; give it on the command line yourself")


def _targets(node: Any, path: str, interpolations: bool):
    if isinstance(node, (DictConfig, ListConfig)):
        keys = list(node.keys()) if isinstance(node, DictConfig) else list(range(len(node)))
        if not interpolations:
            for key in keys:
                if OmegaConf.is_interpolation(node, key):
                    raise UserError(f"refused a config read from a file: {path}{key} is an interpolation; a saved "
                                    "config is written resolved")
        items = [(str(k), node._get_node(k) if interpolations else node[k]) for k in keys]
    elif isinstance(node, dict):
        items = [(str(k), v) for k, v in node.items()]
    elif isinstance(node, (list, tuple)):
        items = [(str(i), v) for i, v in enumerate(node)]
    else:
        return
    for key, value in items:
        if key == "_target_":
            yield path.rstrip("."), value._value() if hasattr(value, "_value") else value
        else:
            yield from _targets(value, f"{path}{key}.", interpolations)
