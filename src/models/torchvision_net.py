"""A torchvision classification model as a task's model: the faithful Fashion-MNIST MobileNet (problem 5).

docs/problems.md's original upscales the 28x28 grey images to 56x56, repeats the grey channel three times, and puts
dropout 0.5 and a 10-way softmax on MobileNet; all layers train. Here the upscaling (bilinear) and the channel
repeat happen inside the model, on the device, so the DataModule keeps serving 28x28 single-channel batches. Any
model of torchvision's registry works (mobilenet_v2, mobilenet_v3_small/large, resnet18, ...), optionally
ImageNet-initialised (`pretrained`) or loaded from a local state_dict (`weights_path`); see torchvision_backbone.py.

With ImageNet weights, feed inputs scaled to [0, 1] (dataset.normalize=false) and set input_norm=imagenet, so the
network sees the statistics it was trained on.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .torchvision_backbone import build_torchvision, drop_auxiliary_classifiers, replace_last_linear

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class TorchvisionClassifier(nn.Module):
    def __init__(
        self,
        arch: str = "mobilenet_v2",
        num_classes: int = 10,
        in_channels: int = 1,
        input_size: int | None = 56,
        dropout: float | None = 0.5,
        pretrained: bool | str = False,
        weights_path: str | None = None,
        input_norm: str | None = None,
        channels_last: bool = True,
    ):
        super().__init__()
        if input_norm not in (None, "imagenet"):
            raise ValueError(f"input_norm='{input_norm}' is not null or imagenet")
        self.net = replace_last_linear(drop_auxiliary_classifiers(build_torchvision(arch, pretrained, weights_path)),
                                     num_classes, dropout)
        self.in_channels, self.input_size, self.channels_last = in_channels, input_size, channels_last
        if input_norm == "imagenet":
            self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
            self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        else:
            self.mean = self.std = None
        if channels_last:
            self.net.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> logits (B, num_classes); C = 1 is repeated to the 3 channels the backbone expects."""
        if self.input_size and x.shape[-1] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if self.mean is not None:
            x = (x - self.mean) / self.std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)
