"""A residual network of dilated 1-D convolutions for spectra (problem 8 of docs/problems.md: the LAMOST classifier of
the Tianchi 2018 contest).

One block: three convolutions of kernel 3 and dilation 1, 2 and 4 in sequence, each giving 2f channels that are
"folded" to f by adding the first half of the channels to the second; the block's input is added back (through a
1x1 convolution when the width changes), then max-pool 2. The original's widths are 16,16,32,32,64,64,128,128 with
the pool after the first seven blocks; then dropout of whole time steps (0.5: a step's features are all kept or all
dropped, Keras's `noise_shape=(batch, 1, channels)` on the (batch, channels, steps) layout used here), a global max
over the steps, Dense 128 and the 4 class scores.

The fold only adds something when a nonlinearity comes before it (without one, conv-then-add-halves is one f-channel
convolution written twice), so each convolution's 2f outputs go through the activation first; the sum of two
rectified halves is a piecewise-linear unit with more kinks than one ReLU (like maxout, with a sum for the max).

Options beyond the original, for "ours" (all off in the faithful config): `norm: batch` puts a BatchNorm after each
convolution (before the activation), `in_channels` > 1 takes extra input channels (a mask), `stem` adds a first
plain convolution of that width, `dropout_all` puts the time-step dropout after every block too.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .dropout import NoiseShapeDropout

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "leaky_relu": lambda: nn.LeakyReLU(0.1), "elu": nn.ELU}


def _activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"activation '{name}' is not one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


class FoldedConv(nn.Module):
    """Conv1d to 2f channels, (norm), activation, then the two halves added: f channels."""

    def __init__(self, cin: int, f: int, kernel_size: int, dilation: int, activation: str, norm: str | None):
        super().__init__()
        self.conv = nn.Conv1d(cin, 2 * f, kernel_size, dilation=dilation, padding=dilation * (kernel_size // 2),
                              bias=norm is None)
        self.norm = nn.BatchNorm1d(2 * f) if norm == "batch" else nn.Identity()
        self.act = _activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.norm(self.conv(x)))
        a, b = h.chunk(2, dim=1)
        return a + b


class DilatedBlock(nn.Module):
    def __init__(self, cin: int, f: int, dilations: Sequence[int], kernel_size: int, activation: str,
                 norm: str | None, pool: bool):
        super().__init__()
        widths = [cin] + [f] * len(dilations)
        self.convs = nn.Sequential(*(FoldedConv(a, f, kernel_size, d, activation, norm)
                                     for a, d in zip(widths, dilations)))
        self.skip = nn.Conv1d(cin, f, 1) if cin != f else nn.Identity()
        self.pool = nn.MaxPool1d(2) if pool else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.convs(x) + self.skip(x))


class DilatedResNet1D(nn.Module):
    def __init__(self, num_classes: int, in_channels: int = 1,
                 widths: Sequence[int] = (16, 16, 32, 32, 64, 64, 128, 128), dilations: Sequence[int] = (1, 2, 4),
                 kernel_size: int = 3, pool_blocks: int | None = None, dropout: float = 0.5, hidden: int = 128,
                 activation: str = "relu", norm: str | None = None, stem: int = 0, dropout_all: float = 0.0):
        super().__init__()
        if norm not in (None, "none", "batch"):
            raise ValueError(f"norm '{norm}' is not one of none, batch")
        norm = None if norm == "none" else norm
        pool_blocks = len(widths) - 1 if pool_blocks is None else pool_blocks
        layers: list[nn.Module] = []
        cin = in_channels
        if stem:
            layers += [nn.Conv1d(cin, stem, 7, padding=3, bias=norm is None),
                       nn.BatchNorm1d(stem) if norm else nn.Identity(), _activation(activation)]
            cin = stem
        for i, f in enumerate(widths):
            layers.append(DilatedBlock(cin, f, dilations, kernel_size, activation, norm, pool=i < pool_blocks))
            if dropout_all and i < len(widths) - 1:
                layers.append(NoiseShapeDropout(dropout_all, (None, 1, None)))
            cin = f
        self.blocks = nn.Sequential(*layers)
        self.dropout = NoiseShapeDropout(dropout, (None, 1, None))  # whole time steps: one mask value per step
        self.fc = nn.Sequential(nn.Linear(cin, hidden), _activation(activation))
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Spectra (B, L) or (B, C, L) -> class logits (B, num_classes)."""
        if x.dim() == 2:
            x = x.unsqueeze(1)
        h = self.dropout(self.blocks(x))
        return self.classifier(self.fc(h.amax(dim=-1)))
