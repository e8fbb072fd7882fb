"""Checkpoints: written atomically, read with `weights_only=True`, and partially loadable across stages.

A checkpoint is a plain dict of tensors, numbers and strings (nothing that needs unpickling code):
  model, head, data          state dicts of the model, the head and the DataModule (a vocabulary, class names)
  config                     the resolved config of the stage that wrote it, as YAML text
  optimizer, scheduler, scaler, counters, rng, tracker     only in `last.pt`, for resuming
"""
from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn

from .errors import UserError


def save_atomic(obj: dict[str, Any], path: Path) -> None:
    """Write to a temporary file in the same folder, fsync, then rename: a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # a full disk, or a second Ctrl-C during the write: no half-written file left behind
        tmp.unlink(missing_ok=True)
        raise


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():  # a run directory: its best weights, the ones its test score and later stages use
        candidates = ("checkpoints/best.pt", "checkpoints/last.pt", "best.pt", "last.pt")
        for candidate in (path / c for c in candidates):
            if candidate.is_file():
                path = candidate
                break
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path} (give a .pt file or a run directory with checkpoints/)")
    if path.stat().st_size == 0:
        raise UserError(f"cannot read checkpoint {path}: the file is empty (a write that never finished?)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # corrupt, truncated, or not a checkpoint at all
        raise UserError(f"cannot read checkpoint {path}: {_load_failure(e)}") from None


def _load_failure(e: Exception) -> str:
    """torch's reason, without its advice to retry with weights_only=False: a file that needs it holds code, which a
    checkpoint of this trainer never does, and is refused."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    if lines and lines[0].startswith("Weights only load failed"):
        detail = "; ".join(line for line in lines[1:] if "weights_only" not in line and "documentation" not in line)
        if "GLOBAL" in detail:
            return (f"it holds Python objects that only unpickling code could rebuild ({detail}), which a checkpoint "
                    "written by this trainer never does; it is refused, not run")
        return f"it is not a checkpoint (torch: {detail or 'unreadable'})"
    first = lines[0].split(". ")[0] if lines else "no detail"  # torch's first sentence; the rest is advice
    return f"{type(e).__name__}: {first}"


def rng_state() -> dict[str, Any]:
    version, internal, gauss = random.getstate()
    state = {
        "python": list(internal) + [-1 if gauss is None else gauss],
        "python_version": version,
        "numpy": _numpy_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    internal = state["python"]
    gauss = internal[-1]
    random.setstate((state["python_version"], tuple(int(v) for v in internal[:-1]), None if gauss == -1 else gauss))
    np_state = state["numpy"]
    np.random.set_state(("MT19937", np_state["keys"].numpy().astype(np.uint32), int(np_state["pos"]),
                         int(np_state["has_gauss"]), float(np_state["cached_gaussian"])))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _numpy_state() -> dict[str, Any]:
    _, keys, pos, has_gauss, cached = np.random.get_state()
    return {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos, "has_gauss": has_gauss,
            "cached_gaussian": cached}


def filter_state(
    state: dict[str, torch.Tensor],
    include: Iterable[str] | None = None,
    exclude: Iterable[str] | None = None,
    rename: dict[str, str] | None = None,
) -> dict[str, torch.Tensor]:
    """Keep keys matching any `include` regex and no `exclude` regex, then apply `rename` (regex -> replacement).

    This is how a stage seeds a different model from the previous stage's weights, e.g. a classifier's encoder from
    a language model: include=["^encoder\\."], or rename={"^lm\\.": "encoder."}.
    """
    inc = [re.compile(p) for p in include or []]
    exc = [re.compile(p) for p in exclude or []]
    out = {}
    for key, value in state.items():
        if inc and not any(p.search(key) for p in inc):
            continue
        if any(p.search(key) for p in exc):
            continue
        for pattern, repl in (rename or {}).items():
            key = re.sub(pattern, repl, key)
        out[key] = value
    return out


def load_partial(module: nn.Module, state: dict[str, torch.Tensor], source: str, strict: bool = False) -> list[str]:
    """Load matching tensors into `module`; return the names loaded. Shape mismatches are a UserError."""
    own = module.state_dict()
    loaded = []
    for key, value in state.items():
        if key not in own:
            if strict:
                raise UserError(f"{source}: key '{key}' does not exist in {type(module).__name__}")
            continue
        if own[key].shape != value.shape:
            raise UserError(
                f"{source}: '{key}' has shape {tuple(value.shape)} but the model expects {tuple(own[key].shape)}"
            )
        own[key] = value
        loaded.append(key)
    if not loaded:
        raise UserError(f"{source}: no weights matched {type(module).__name__}; check init.include / init.rename")
    module.load_state_dict(own)
    return loaded
