"""A multi-layer perceptron with noise-shaped dropout after each hidden layer (the dropout study, problem 6).

The classic setting in which dropout was shown to matter (Srivastava et al. 2014, MNIST MLPs): wide ReLU layers
that memorise a small training set without it. Inputs of shape `in_shape` (e.g. [1, 28, 28]) are flattened. `noise_shape` is the mask shape
of the hidden activations (B, H) (see models/dropout.py): null = elementwise, [1, null] = one mask shared by the
whole batch; `input_dropout` drops input pixels elementwise (0 = off).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from .dropout import NoiseShapeDropout


class DropoutMLP(nn.Module):
    def __init__(self, in_shape: Sequence[int], num_classes: int, hidden: Sequence[int] = (1024, 1024), p: float = 0.5,
                 noise_shape: Sequence[int | None] | None = None, input_dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        if input_dropout:
            layers.append(NoiseShapeDropout(input_dropout))
        width = math.prod(in_shape)
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(inplace=True), NoiseShapeDropout(p, noise_shape)]
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
