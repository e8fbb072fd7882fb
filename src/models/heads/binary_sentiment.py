"""Binary classification from one logit per sample (a sigmoid output, as the original sentiment classifier of
problem 4 had): binary cross-entropy; accuracy, per-class accuracy and macro-F1 from one confusion matrix (the
metrics of heads/classification.py); decoding to (label, probability of the positive class); pseudo-labels for
self-training.

The model's output is the logit (B,) (or a dict holding it under "logits"); `batch["y"]` is 0 or 1. An ensemble
also returns its members' logits (K, B) under "members": the loss is then the sum of theirs, so each member learns
as if alone, and "logits" (their combined prediction) is what is scored, decoded and pseudo-labelled.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F

from .classification import ClassificationHead, logits_of


class BinaryHead(ClassificationHead):
    def __init__(self, class_names: Sequence[str] = ("neg", "pos"), per_class_metrics: bool = True,
                 save_confusion: Sequence[str] = ("test",)):
        super().__init__(num_classes=2, class_names=class_names, per_class_metrics=per_class_metrics,
                         save_confusion=save_confusion)

    @staticmethod
    def _logit(outputs: Any) -> torch.Tensor:
        return logits_of(outputs).float().reshape(-1)

    def loss(self, outputs: Any, batch: dict[str, Any]) -> torch.Tensor:
        y = batch["y"].float()
        if isinstance(outputs, dict) and "members" in outputs:  # each member of an ensemble learns on its own
            return sum(F.binary_cross_entropy_with_logits(m.float(), y) for m in outputs["members"])
        return F.binary_cross_entropy_with_logits(self._logit(outputs), y)

    def predict(self, outputs: Any) -> torch.Tensor:
        return (self._logit(outputs) > 0).long()

    def update(self, outputs: Any, batch: dict[str, Any]) -> None:
        y = batch["y"]
        self.accumulate("loss_sum", F.binary_cross_entropy_with_logits(self._logit(outputs), y.float(),
                                                                       reduction="sum").double())
        self.accumulate("confusion", self.confusion_counts(y, self.predict(outputs)))

    def decode(self, outputs: Any, batch: dict[str, Any]) -> list[tuple[str, float]]:
        p = torch.sigmoid(self._logit(outputs)).tolist()
        return [(self.class_names[int(q > 0.5)], q) for q in p]

    def pseudo_label(self, outputs: Any, batch: dict[str, Any]) -> tuple[list[int], torch.Tensor]:
        """Self-training: the predicted class of each sample, and its probability as the confidence."""
        p = torch.sigmoid(self._logit(outputs))
        return (p > 0.5).long().tolist(), torch.maximum(p, 1 - p)
