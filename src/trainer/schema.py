"""Config values checked against the constructor they configure, when the config is composed: before any work.

A dataset, model, head, optimiser or schedule config names a `_target_`; its keys are that callable's arguments.
So the callable's signature is the schema: the type hints say what a value must be (`int`, `float`, `bool`, `str`,
`Literal[...]`, `Optional[...]`, sequences), and `typing.Annotated` bounds from the `annotated-types` package say
which values make sense (`Annotated[int, Ge(1)]`, `Annotated[float, Interval(ge=0, lt=1)]`). A value that breaks
them is one line naming the key (`bad value for 'model.blocks': -1 is not >= 1`), instead of an exception deep in
the code once the data has been read. Values still to be filled in (`${data_info.*}`) are checked when built.
"""
from __future__ import annotations

import inspect
import typing
from collections.abc import Sequence
from typing import Any, Literal, Union

import annotated_types as at
from omegaconf import DictConfig, OmegaConf

from .errors import UserError


class Check:
    """An `Annotated` marker for what a type cannot say: `fn(value)` returns why the value is bad, or None (e.g.
    `Annotated[list[str], Check(fonts_problem)]`: font files that must exist). Keep it cheap: it runs at composition."""

    def __init__(self, fn: Any):
        self.fn = fn


HYDRA_KEYS = {"_target_", "_partial_", "_args_", "_recursive_", "_convert_"}
SECTIONS = ("dataset", "model", "head", "optim", "sched")


def check_sections(cfg: DictConfig, prefix: str = "") -> None:
    """Check each of the config's sections against the signature of its `_target_`."""
    for section in SECTIONS:
        node = cfg.get(section)
        if isinstance(node, DictConfig) and node.get("_target_"):
            check_section(node, f"{prefix}{section}")


def check_section(node: DictConfig, where: str) -> None:
    from hydra._internal.utils import _locate

    try:
        target = _locate(node._target_)
    except Exception as e:  # noqa: BLE001 - the build names it in one line later; nothing to check here
        raise UserError(f"{where}._target_={node._target_!r} cannot be imported ({type(e).__name__}: {e})") from None
    call = target.__init__ if inspect.isclass(target) else target
    try:
        params = inspect.signature(target).parameters
        hints = typing.get_type_hints(call, include_extras=True)
    except (TypeError, ValueError, NameError):  # a builtin, or hints that cannot be evaluated: nothing to check
        return
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    raw = OmegaConf.to_container(node, resolve=False)
    for key, value in raw.items():
        if key in HYDRA_KEYS:
            continue
        if key not in params:
            if not takes_any:
                valid = ", ".join(k for k, p in params.items() if p.kind is not inspect.Parameter.VAR_POSITIONAL)
                raise UserError(f"unknown key '{where}.{key}'; {target.__name__} takes: {valid}")
            continue
        if isinstance(value, str) and "${" in value or key not in hints:
            continue
        problem = _problem(node[key] if not isinstance(value, (dict, list)) else value, hints[key])
        if problem:
            raise UserError(f"bad value for '{where}.{key}': {problem}")


def _problem(value: Any, hint: Any) -> str | None:
    """Why `value` does not fit `hint`, or None."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Annotated:
        problem = _problem(value, args[0])
        return problem or next((p for p in (m.fn(value) if isinstance(m, Check) else _bound(value, m)
                                            for m in args[1:]) if p), None)
    if hint is Any or isinstance(hint, typing.TypeVar):
        return None
    if hint is type(None):
        return None if value is None else f"{value!r} is not null"
    if origin is Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        problems = [_problem(value, a) for a in args]
        return None if any(p is None for p in problems) else next(p for p in problems if p)
    if value is None:
        return None if hint is type(None) else f"null is not allowed (give a {_name(hint)})"
    if origin is Literal:
        return None if value in args else f"{value!r} is not one of {', '.join(map(repr, args))}"
    if hint is bool:
        return None if isinstance(value, bool) else f"{value!r} is not true or false"
    if hint is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else f"{value!r} is not a whole number"
    if hint is float:
        return None if isinstance(value, (int, float)) and not isinstance(value, bool) else f"{value!r} is not a number"
    if hint is str:
        return None if isinstance(value, str) else f"{value!r} is not text"
    if origin in (list, tuple, Sequence) or hint in (list, tuple):
        return None if isinstance(value, (list, tuple)) else f"{value!r} is not a list"
    if origin is dict or hint is dict:
        return None if isinstance(value, dict) else f"{value!r} is not a mapping"
    if inspect.isclass(hint) and isinstance(value, (str, int, float)) and not isinstance(value, hint):
        return f"{value!r} is not a {hint.__name__}"  # (a mapping may be a config that builds one: not checked)
    return None  # a type this check does not know: the constructor decides


CHECKS = ((at.Ge, "ge", ">="), (at.Gt, "gt", ">"), (at.Le, "le", "<="), (at.Lt, "lt", "<"))


def _bound(value: Any, marker: Any) -> str | None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    for bound in (list(marker) if isinstance(marker, at.Interval) else [marker]):
        for cls, attr, word in CHECKS:
            if isinstance(bound, cls):
                limit = getattr(bound, attr)
                if not {">=": value >= limit, ">": value > limit, "<=": value <= limit, "<": value < limit}[word]:
                    return f"{value} is not {word} {limit}"
    return None


def _name(hint: Any) -> str:
    return getattr(hint, "__name__", str(hint))
