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
which matches training with random horizontal flips; `tta_shift=s` adds the image translated by (+s, +s) and
(-s, -s) pixels, edges replicated (and their mirrors), which matches training with pad-and-crop. The six views are
averaged with equal weights (airbench's six-view TTA weights the unshifted pair double and pads by reflection).

Three options from the fast CIFAR-10 training recipes (Page 2019, "How to train your ResNet 8: bag of tricks";
Jordan 2024, airbench), which buy accuracy per second on a short schedule:
  - `whiten=k`: the first layer is a fixed k x k patch-whitening convolution set from training images
    (models/whitening.py) instead of a learned stem convolution;
  - `pool_first`: conv -> max-pool -> BN -> act, so BN and the activation run on a quarter of the pixels;
  - `act="gelu"`: a smooth activation (Page used CELU, airbench GELU).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .whitening import PatchWhitening


ACTIVATIONS = {"relu": lambda: nn.ReLU(inplace=True), "gelu": nn.GELU}


def conv_bn(cin: int, cout: int, act: str = "relu", pool_first: bool = False) -> nn.Sequential:
    """conv -> BN -> act, or conv -> 2x2 max-pool -> BN -> act with pool_first."""
    pool = [nn.MaxPool2d(2)] if pool_first else []
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), *pool, nn.BatchNorm2d(cout),
                         ACTIVATIONS[act]())


class Residual(nn.Module):
    def __init__(self, channels: int, act: str = "relu"):
        super().__init__()
        self.body = nn.Sequential(conv_bn(channels, channels, act), conv_bn(channels, channels, act))

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
        act: str = "relu",
        pool_first: bool = False,
        whiten: int = 0,
        tta_shift: int = 0,
    ):
        super().__init__()
        if len(widths) != len(res_blocks):
            raise ValueError(f"widths {list(widths)} and res_blocks {list(res_blocks)} must have the same length")
        if pool not in ("max", "avg"):
            raise ValueError(f"pool='{pool}' is not max or avg")
        if act not in ACTIVATIONS:
            raise ValueError(f"act='{act}' is not one of {', '.join(ACTIVATIONS)}")
        if tta_shift < 0:
            raise ValueError(f"tta_shift={tta_shift} must be 0 (off) or a positive number of pixels")
        if whiten:  # replaces the stem convolution (`stem` is then unused)
            whitening = PatchWhitening(in_channels, whiten)
            layers: list[nn.Module] = [whitening, ACTIVATIONS[act]()]
            cin = whitening.out_channels
        else:
            layers = [conv_bn(in_channels, stem, act)]
            cin = stem
        for width, n_res in zip(widths, res_blocks):
            layers += [conv_bn(cin, width, act, pool_first=True)] if pool_first else \
                [conv_bn(cin, width, act), nn.MaxPool2d(2)]
            layers += [Residual(width, act) for _ in range(n_res)]
            cin = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveMaxPool2d(1) if pool == "max" else nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.classifier = nn.Linear(cin, num_classes)
        self.logit_scale, self.channels_last = logit_scale, channels_last
        self.flip_tta, self.tta_shift = flip_tta, tta_shift
        if channels_last:
            self.to(memory_format=torch.channels_last)  # conv weights too, so oneDNN does not reorder them each step

    @property
    def whitening(self) -> PatchWhitening | None:
        first = self.features[0]
        return first if isinstance(first, PatchWhitening) else None

    @property
    def needs_data_init(self) -> bool:
        """True until a whitening first layer has been set from data (trainer.loop.fit then calls init_from_data)."""
        return self.whitening is not None and not bool(self.whitening.initialised)

    def init_from_data(self, x: torch.Tensor) -> None:
        """Data-dependent initialisation from a batch of training images."""
        if self.whitening is not None:
            self.whitening.init_from_data(x)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        h = self.pool(self.features(x)).flatten(1)
        return self.classifier(self.dropout(h)) * self.logit_scale

    def tta_views(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The image, moved by (+s, +s) and (-s, -s) pixels when tta_shift=s, and the mirror of each if flip_tta."""
        views = [x]
        if self.tta_shift:
            s = self.tta_shift
            padded = F.pad(x, (s, s, s, s), mode="replicate")
            h, w = x.shape[-2:]
            views += [padded[..., :h, :w], padded[..., 2 * s:, 2 * s:]]
        return views + [v.flip(-1) for v in views] if self.flip_tta else views

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> logits (B, num_classes); in eval mode with TTA, the mean of the views' logits."""
        if self.training or not (self.flip_tta or self.tta_shift):
            return self.logits(x)
        return torch.stack([self.logits(v) for v in self.tta_views(x)]).mean(0)
