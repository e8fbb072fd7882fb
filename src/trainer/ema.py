"""Exponential moving average of the weights, swapped into the net for validation, best.pt and the test.

The same idea as timm's `--model-ema` (ModelEmaV3) and Keras's `use_ema=True`: after every optimizer step,
ema = decay * ema + (1 - decay) * weights. Early on the decay is warmed up as timm does, min(decay, (1 + n) / (10 + n))
after n updates, so that a short run is not dominated by the random initialisation.

What is averaged: every trainable parameter of the net, the head's included (e.g. center-loss centres), and the
model's floating-point buffers (batch-norm statistics). Not the head's buffers: those are settings a head chooses on
validation (dog_finetune's blend weight alpha), which must stay what was chosen for the averaged weights.

Rather than keep a second copy of the whole net (torch.optim.swa_utils.AveragedModel), the averages are kept as
tensors swapped into the live net while it is evaluated or saved, so that the head stays one object.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from torch import nn

from .errors import UserError


class WeightEMA:
    def __init__(self, net: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        model = getattr(net, "model", None)
        prefix = "model." if model is not None else ""
        live = {name: p for name, p in net.named_parameters() if p.requires_grad}
        for owner, module in (model or net).named_modules():
            for name, b in module.named_buffers(recurse=False):
                # a buffer its module lists in `ema_skip` is set by a decision (e.g. on validation), not averaged
                if b.is_floating_point() and name not in getattr(module, "ema_skip", ()):
                    live[prefix + (f"{owner}." if owner else "") + name] = b
        self.names, self.live = list(live), list(live.values())
        self.shadow = [t.detach().clone() for t in self.live]

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(self.shadow, self.live, 1.0 - decay)

    @contextlib.contextmanager
    def swapped_in(self) -> Iterator[None]:
        """Inside the block the net holds the averaged weights; its own weights are restored after."""
        with torch.no_grad():
            backup = [t.clone() for t in self.live]
            torch._foreach_copy_(self.live, self.shadow)
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(self.live, backup)

    def state_dict(self) -> dict[str, Any]:
        return {"updates": self.updates, "shadow": dict(zip(self.names, self.shadow))}  # saved at once: no copy

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state["shadow"]
        differ = sorted(set(saved) ^ set(self.names))
        differ += [n for n, t in zip(self.names, self.shadow) if n in saved and saved[n].shape != t.shape]
        if differ:
            raise UserError(f"the saved weight average does not fit this stage's trainable weights (differing: "
                            f"{', '.join(differ[:3])}{' ...' if len(differ) > 3 else ''}); resume with the "
                            f"run's own trainable/frozen settings")
        self.updates = state["updates"]
        with torch.no_grad():
            torch._foreach_copy_(self.shadow, [saved[n].to(s.device) for n, s in zip(self.names, self.shadow)])
