"""Our Fashion-MNIST model: a small ResNet-9-style net, sized for training on a 2-core CPU.

The layout follows David Page's DAWNBench ResNet-9 ("How to train your ResNet", 2018), the net behind the fast
CIFAR-10 training runs: a stem convolution, then per stage a conv -> BN -> ReLU -> 2x2 max-pool (down-sampling by
pooling after a full-resolution conv is cheaper than a strided residual block for the accuracy it buys) followed by
optional residual blocks of two conv-BN-ReLU layers, then a global pool and a linear classifier whose logits are
scaled down (Page's 0.125 multiplier, which stabilises training at high learning rates).

At 28x28 the stages run at 28 -> 14 -> 7 -> 3 pixels. Widths and residual blocks are configurable so that the same
module serves the throughput measurements in bench/fashion_models.py. Channels-last memory format is used because
oneDNN's convolutions are faster in it on this CPU.

`flip_tta`: in eval mode, average the logits of the image and of its horizontal mirror (test-time augmentation),
which matches training with random horizontal flips.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


def conv_bn(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class Residual(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(conv_bn(channels, channels), conv_bn(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class SmallResNet(nn.Module):
    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        stem: int = 32,
        widths: Sequence[int] = (64, 128, 256),
        res_blocks: Sequence[int] = (1, 0, 1),
        pool: str = "max",
        dropout: float = 0.0,
        logit_scale: float = 0.125,
        flip_tta: bool = False,
        channels_last: bool = True,
    ):
        super().__init__()
        if len(widths) != len(res_blocks):
            raise ValueError(f"widths {list(widths)} and res_blocks {list(res_blocks)} must have the same length")
        if pool not in ("max", "avg"):
            raise ValueError(f"pool='{pool}' is not max or avg")
        layers: list[nn.Module] = [conv_bn(in_channels, stem)]
        cin = stem
        for width, n_res in zip(widths, res_blocks):
            layers += [conv_bn(cin, width), nn.MaxPool2d(2)]
            layers += [Residual(width) for _ in range(n_res)]
            cin = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveMaxPool2d(1) if pool == "max" else nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.classifier = nn.Linear(cin, num_classes)
        self.logit_scale, self.flip_tta, self.channels_last = logit_scale, flip_tta, channels_last
        if channels_last:
            self.to(memory_format=torch.channels_last)  # conv weights too, so oneDNN does not reorder them each step

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        h = self.pool(self.features(x)).flatten(1)
        return self.classifier(self.dropout(h)) * self.logit_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> logits (B, num_classes)."""
        if self.flip_tta and not self.training:
            return 0.5 * (self.logits(x) + self.logits(x.flip(-1)))
        return self.logits(x)
