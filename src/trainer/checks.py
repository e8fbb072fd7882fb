"""Every job's overrides composed and checked before Hydra runs anything, so that an unknown task, an unknown key or
a bad value (any stage's included) fails with one line that names what is valid, not with Hydra's multi-line report
or after the first stage has trained."""
from __future__ import annotations

import contextlib
import itertools
from pathlib import Path

from .invocation import CONF_PACKAGE


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
                raise UserError(explain_compose_error(e, job)) from None
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


def explain_compose_error(e: Exception, job: list[str]) -> str:
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
