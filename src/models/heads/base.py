"""The contract between the generic loop and a problem: the head.

A head turns model outputs into a loss (training), accumulates metric state over an evaluation pass, reduces it to
numbers (across ranks too) and decodes outputs into predictions. It is an nn.Module so it may own parameters (class
centres of a center loss, CRF transitions) and state saved with checkpoints (a blend weight chosen on validation).

Metric state is kept as sums of counts in tensors on the device: updating them costs no host sync, and one
all-reduce of the sums gives exact metrics under DistributedDataParallel.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainer.distributed import all_gather_object, all_reduce_sum, is_distributed


class Head(nn.Module):
    #: Metric that picks the best checkpoint and drives early stopping, and whether higher is better.
    monitor: str = "loss"
    monitor_mode: str = "min"
    #: The split being evaluated ("val", "test", ...), set by the loop's `evaluate` before the first `update`.
    split: str | None = None

    def __init__(self) -> None:
        super().__init__()
        self._sums: dict[str, torch.Tensor] = {}
        #: The last result of `sums()`: hooks after `compute` read it instead of reducing again, since a
        #: collective called on rank 0 only (where the run directory is) would hang the other ranks.
        self.reduced: dict[str, torch.Tensor] = {}

    # --- training ----------------------------------------------------------------------------------------------
    def loss(self, outputs: Any, batch: dict[str, Any]) -> torch.Tensor:
        raise NotImplementedError

    # --- evaluation --------------------------------------------------------------------------------------------
    def reset(self) -> None:
        self._sums = {}
        self.reduced: dict[str, torch.Tensor] = {}

    def accumulate(self, name: str, value: torch.Tensor) -> None:
        """Add `value` (any shape, summed elementwise) to the running sum `name`."""
        value = value.detach()
        if name in self._sums:
            self._sums[name] = self._sums[name] + value
        else:
            self._sums[name] = value.clone()

    def update(self, outputs: Any, batch: dict[str, Any]) -> None:
        """Accumulate metric state for one evaluation batch (default: the mean loss)."""
        n = torch.tensor(float(_batch_len(batch)), device=_device_of(outputs))
        self.accumulate("loss_sum", self.loss(outputs, batch).float() * n)
        self.accumulate("count", n)

    def sums(self) -> dict[str, torch.Tensor]:
        """The accumulated sums, reduced over ranks, on the CPU."""
        sums = self._sums
        if is_distributed():
            # A rank that got no evaluation batch has no sums; it must still join the all-reduce with zeros.
            shapes = {k: tuple(v.shape) for k, v in sums.items()}
            for other in all_gather_object(shapes):
                shapes.update(other)
            device = next(iter(sums.values())).device if sums else _default_device()
            sums = {k: sums.get(k, torch.zeros(shape, device=device)) for k, shape in shapes.items()}
        names = sorted(sums)
        if not names:
            return {}
        flat = torch.cat([sums[k].reshape(-1).double() for k in names])
        flat = all_reduce_sum(flat).cpu()
        out, i = {}, 0
        for k in names:
            size = sums[k].numel()
            out[k] = flat[i : i + size].reshape(sums[k].shape)
            i += size
        self.reduced = out
        return out

    def compute(self) -> dict[str, float]:
        """Metrics from the accumulated state; keys without a split prefix ("acc", not "val/acc")."""
        s = self.sums()
        return {"loss": float(s["loss_sum"] / s["count"].clamp(min=1))} if s else {}

    def on_validation_end(self, split: str, run_dir: Path | None) -> None:
        """Hook after `compute` on a split: save artefacts (a confusion matrix PNG), tune decode-time state.

        Called on every rank, with `run_dir` None except on rank 0; read `self.reduced`, never call `sums()` here.
        """

    # --- prediction --------------------------------------------------------------------------------------------
    def decode(self, outputs: Any, batch: dict[str, Any]) -> list[Any]:
        """One prediction per sample, in batch order (strings, tag lists, class names...)."""
        raise NotImplementedError(f"{type(self).__name__} does not decode predictions")


def _default_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def _batch_len(batch: dict[str, Any]) -> int:
    x = batch["x"]
    return len(x)


def _device_of(outputs: Any) -> torch.device:
    if torch.is_tensor(outputs):
        return outputs.device
    if isinstance(outputs, dict):
        return next(v.device for v in outputs.values() if torch.is_tensor(v))
    return next(v.device for v in outputs if torch.is_tensor(v))
