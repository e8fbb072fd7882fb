"""A torchvision backbone with the dog fine-tuning original's head (problem 7 of docs/problems.md).

The original fine-tunes an ImageNet Xception (average-pooled to 2048 features) and puts on top:
  - a gated linear unit, Dense(64) * sigmoid(Dense(64)) (Dauphin et al. 2017's GLU, on the pooled features), whose
    64-d output is the embedding that a center loss pulls towards learned class centres;
  - the main classifier on that embedding;
  - an auxiliary classifier directly on the pooled features.
Any torchvision classification model can be the backbone (`arch`; Xception is not in torchvision, the closest there is
inception_v3, also 299 px and 2048 features); its ImageNet classifier is cut off (see torchvision_backbone.py), and
it starts from ImageNet weights (`pretrained`), a local state_dict (`weights_path`) or random initialisation.

Outputs a dict: "logits" (main), "aux_logits" and "embedding", which the center_loss head turns into the loss and the
blended prediction.
"""
from __future__ import annotations

import torch
from torch import nn

from .torchvision_backbone import build_torchvision, cut_classifier, drop_auxiliary_classifiers


class GatedLinearUnit(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.value, self.gate = nn.Linear(cin, cout), nn.Linear(cin, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.value(x) * torch.sigmoid(self.gate(x))


class BackboneGLUClassifier(nn.Module):
    def __init__(self, arch: str = "resnet50", num_classes: int = 100, pretrained: bool | str = False,
                 weights_path: str | None = None, embed_dim: int = 64, dropout: float = 0.0,
                 channels_last: bool = True):
        super().__init__()
        backbone = drop_auxiliary_classifiers(build_torchvision(arch, pretrained, weights_path))
        self.backbone, features = cut_classifier(backbone)
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.glu = GatedLinearUnit(features, embed_dim)
        self.classifier = nn.Linear(embed_dim, num_classes)
        self.aux_classifier = nn.Linear(features, num_classes)
        self.channels_last = channels_last
        if channels_last:
            self.backbone.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        features = self.backbone(x)
        if isinstance(features, tuple):  # Inception/GoogLeNet in training mode: (logits, aux logits)
            features = features[0]
        features = self.dropout(features.flatten(1))
        embedding = self.glu(features)
        return {"logits": self.classifier(embedding), "aux_logits": self.aux_classifier(features),
                "embedding": embedding}
