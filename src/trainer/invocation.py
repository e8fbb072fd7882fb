"""What the user typed, captured once: the job's command-line overrides as Hydra parsed them, and the debug preset.

The CLI builds one `Invocation` per job and passes it down; nothing else re-reads Hydra's override list. Three places
need it: stages (keys set on the command line or by `debug=` win over a stage's own values), and eval/predict
(`model.*` and `dataset.*` keys given on the command line win over the checkpoint's).
"""
from __future__ import annotations

import functools
import importlib.resources
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

#: The config tree ships inside the package (conf/ is installed as trainer.conf); Hydra reads it by its package path,
#: which works from a checkout, an editable install and a wheel alike.
CONF_PACKAGE = "trainer.conf"
CONF_DIR = Path(str(importlib.resources.files(CONF_PACKAGE)))


@dataclass(frozen=True)
class Invocation:
    overrides: tuple[str, ...] = ()  # the job's overrides as typed (one job of a sweep: its own values)
    debug: str | None = None  # the `debug=` preset chosen, if any

    @classmethod
    def from_hydra(cls) -> Invocation:
        from hydra.core.hydra_config import HydraConfig

        if not HydraConfig.initialized():
            return cls()
        hc = HydraConfig.get()
        return cls(tuple(hc.overrides.task), hc.runtime.choices.get("debug"))

    @functools.cached_property
    def parsed(self) -> list[Any]:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        return OverridesParser.create().parse_overrides(list(self.overrides))

    def pinned_keys(self) -> list[str]:
        """The dotted config keys this job's command line sets, and those its `debug=` preset sets."""
        keys = []
        for o in self.parsed:
            key = o.key_or_group
            if o.is_delete() or key.startswith("hydra.") or key == "stages":
                continue
            value = o.value()
            if isinstance(value, dict):  # trainer={max_epochs: 1}, stages.lm.trainer={max_epochs: 1}: its leaves
                keys += [f"{key}.{k}" for k in leaf_keys(OmegaConf.create(value))]
            elif "." in key:
                keys.append(key)
        if self.debug:
            keys += leaf_keys(OmegaConf.load(CONF_DIR / "debug" / f"{self.debug}.yaml"))
        return keys

    def section_overrides(self, section: str) -> list[tuple[str, Any]]:
        """The `SECTION.KEY=VALUE` overrides of the command line, as (KEY, value)."""
        return [(o.key_or_group.removeprefix(f"{section}."), o.value()) for o in self.parsed
                if o.key_or_group.startswith(f"{section}.") and not o.is_delete()]

    def ignored_for_checkpoint(self, section: str) -> list[str]:
        """Overrides of `section` that a checkpoint's own config overrules: a group choice, a deletion."""
        return [o.input_line for o in self.parsed
                if o.key_or_group == section or (o.key_or_group.startswith(f"{section}.") and o.is_delete())]


def leaf_keys(node: DictConfig, prefix: str = "") -> list[str]:
    keys = []
    for k, v in node.items():
        if k == "defaults":
            continue
        keys += leaf_keys(v, f"{prefix}{k}.") if isinstance(v, DictConfig) else [f"{prefix}{k}"]
    return keys
