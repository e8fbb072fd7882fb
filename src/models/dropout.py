"""Dropout with a noise shape (problem 6 of docs/problems.md), as Keras's `Dropout(rate, noise_shape)` defines it.

Inverted dropout (Srivastava et al. 2014, in the form every framework uses): in training each element is kept with
probability 1 - p and the kept ones are scaled by 1 / (1 - p), so the expectation of the output equals the input
and evaluation needs no rescaling; in eval mode the module is the identity.

`noise_shape` gives the shape of the Bernoulli mask, broadcast against the input: a size of 1 on an axis shares
one mask value along that axis, `None` (or the input's own size) draws independently along it. For an input
(B, L, D): (None, None, 1) drops whole time steps, (None, 1, None) drops the same features at every time step
(a "spatial"/variational dropout), (1, None, None) shares one mask across the batch. `noise_shape=None` is plain
elementwise dropout, the same distribution as torch.nn.Dropout (tests/test_dropout.py checks both).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class NoiseShapeDropout(nn.Module):
    def __init__(self, p: float = 0.5, noise_shape: Sequence[int | None] | None = None):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability must be in [0, 1], got {p}")
        if noise_shape is not None:
            noise_shape = tuple(None if s is None else int(s) for s in noise_shape)
            if any(s is not None and s < 1 for s in noise_shape):
                raise ValueError(f"noise_shape entries must be None or >= 1, got {list(noise_shape)}")
        self.p, self.noise_shape = float(p), noise_shape

    def mask_shape(self, x: torch.Tensor) -> tuple[int, ...]:
        if self.noise_shape is None:
            return tuple(x.shape)
        if len(self.noise_shape) != x.dim():
            raise ValueError(f"noise_shape {list(self.noise_shape)} has {len(self.noise_shape)} axes but the input "
                             f"has shape {tuple(x.shape)}")
        shape = []
        for axis, (s, n) in enumerate(zip(self.noise_shape, x.shape)):
            if s is None:
                s = n
            if s not in (1, n):
                raise ValueError(f"noise_shape {list(self.noise_shape)}: axis {axis} must be 1, None or {n}")
            shape.append(s)
        return tuple(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if self.p == 1.0:
            return x * 0.0
        keep = 1.0 - self.p
        # float32 mask: in bf16/fp16, 1/keep would be rounded (1.109 for 1/0.9) and bias the expectation
        mask = torch.empty(self.mask_shape(x), dtype=torch.float32, device=x.device).bernoulli_(keep)
        return (x * mask.div_(keep)).to(x.dtype)

    def extra_repr(self) -> str:
        return f"p={self.p}, noise_shape={list(self.noise_shape) if self.noise_shape is not None else None}"
