"""Exponential moving average of the weights, swapped into the net for validation, best.pt and the test.

The same idea as timm's `--model-ema` (ModelEmaV3) and Keras's `use_ema=True`: after every optimizer step,
ema = decay * ema + (1 - decay) * weights, over the trainable parameters and the model's floating-point buffers
(batch-norm statistics). Early on the decay is warmed up as timm does, min(decay, (1 + n) / (10 + n)) after n updates,
so that a short run is not dominated by the random initialisation.

Rather than keep a second copy of the whole net (torch.optim.swa_utils.AveragedModel), the averages are kept as a
flat list of tensors and swapped into the live net while it is evaluated or saved: the head, whose state some tasks
set on validation (e.g. an ensemble weight), stays one object.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from torch import nn


class WeightEMA:
    def __init__(self, net: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        model = getattr(net, "model", net)  # buffers of the model only: a head's buffers are settings, not weights
        self.live = [p for p in net.parameters() if p.requires_grad]
        self.live += [b for b in model.buffers() if b.is_floating_point()]
        self.shadow = [t.detach().clone() for t in self.live]

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(self.shadow, [t.detach() for t in self.live], 1.0 - decay)

    @contextlib.contextmanager
    def swapped_in(self) -> Iterator[None]:
        """Inside the block the net holds the averaged weights; its own weights are restored after."""
        with torch.no_grad():
            backup = [t.detach().clone() for t in self.live]
            torch._foreach_copy_(self.live, self.shadow)
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(self.live, backup)

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "updates": self.updates, "shadow": [t.clone() for t in self.shadow]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["shadow"]) != len(self.shadow):
            raise ValueError(f"EMA state holds {len(state['shadow'])} tensors, this net has {len(self.shadow)}")
        self.updates = state["updates"]
        with torch.no_grad():
            torch._foreach_copy_(self.shadow, [t.to(s.device) for s, t in zip(self.shadow, state["shadow"])])
