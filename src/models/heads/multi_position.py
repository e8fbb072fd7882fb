"""Head for fixed-length sequences of independent classifications (captcha letters): one softmax per position.

Metrics: accuracy of each position and of the whole sequence (all positions right), which is how captcha solvers are
scored.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from .base import Head


class MultiPositionHead(Head):
    monitor, monitor_mode = "acc", "max"

    def __init__(self, length: int = 4, alphabet: str = "abcdefghijklmnopqrstuvwxyz", label_smoothing: float = 0.0):
        super().__init__()
        self.length, self.alphabet, self.label_smoothing = length, alphabet, label_smoothing

    def loss(self, outputs: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        """Mean cross-entropy over samples and positions; outputs (B, P, C), batch["y"] (B, P)."""
        return F.cross_entropy(outputs.flatten(0, 1).float(), batch["y"].flatten(), label_smoothing=self.label_smoothing)

    def update(self, outputs: torch.Tensor, batch: dict[str, Any]) -> None:
        y = batch["y"]
        right = outputs.argmax(-1) == y  # (B, P)
        self.accumulate("loss_sum", F.cross_entropy(outputs.flatten(0, 1).float(), y.flatten(), reduction="sum")
                        / self.length)
        self.accumulate("position_right", right.sum(0).double())
        self.accumulate("all_right", right.all(1).sum().double())
        self.accumulate("count", torch.tensor(float(len(y)), device=y.device, dtype=torch.float64))

    def compute(self) -> dict[str, float]:
        s = self.sums()
        n = float(s["count"])
        metrics = {"loss": float(s["loss_sum"]) / n, "acc": float(s["all_right"]) / n}
        for i, right in enumerate(s["position_right"].tolist()):
            metrics[f"acc_pos{i + 1}"] = right / n
        metrics["char_acc"] = float(s["position_right"].sum()) / (n * self.length)
        return metrics

    def decode(self, outputs: torch.Tensor, batch: dict[str, Any]) -> list[str]:
        return ["".join(self.alphabet[i] for i in row) for row in outputs.argmax(-1).tolist()]
