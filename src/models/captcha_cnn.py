"""The faithful captcha CNN of docs/problems.md (problem 2), after the Keras captcha-breaking example it reproduces:
four blocks of [3x3 conv with 32 filters ('valid' padding, Keras' default), 2x2 max-pool, ReLU], flatten, then one
separate linear classifier per letter position."""
from __future__ import annotations

from typing import Annotated

import torch
from annotated_types import Ge
from torch import nn


class CaptchaCNN(nn.Module):
    def __init__(self, length: int = 4, num_classes: int = 26, in_channels: int = 1, height: int = 60,
                 width: int = 160, filters: Annotated[int, Ge(1)] = 32, blocks: Annotated[int, Ge(1)] = 4):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for _ in range(blocks):
            layers += [nn.Conv2d(channels, filters, 3), nn.MaxPool2d(2), nn.ReLU(inplace=True)]
            channels = filters
        self.features = nn.Sequential(*layers)
        with torch.no_grad():
            flat = self.features(torch.zeros(1, in_channels, height, width)).numel()
        self.classifiers = nn.ModuleList(nn.Linear(flat, num_classes) for _ in range(length))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> logits (B, length, num_classes)."""
        h = self.features(x).flatten(1)
        return torch.stack([clf(h) for clf in self.classifiers], dim=1)
