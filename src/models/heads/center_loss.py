"""Classification with a center loss and an auxiliary classifier; prediction blends the two classifiers (problem 7).

The dog fine-tuning original trains three losses together:
  - cross-entropy of the main classifier (on the 64-d gated embedding);
  - a center loss (Wen et al. 2016, "A Discriminative Feature Learning Approach for Deep Face Recognition"): the
    squared distance between a sample's embedding and its class centre, the centres being parameters learned by
    the optimiser like the original's Embedding layer of centres, weight 0.25;
  - cross-entropy of an auxiliary classifier on the backbone's pooled features, weight 0.25.
It predicts with alpha * softmax(main) + (1 - alpha) * softmax(auxiliary), alpha chosen on validation.

Here each evaluation accumulates one confusion matrix per alpha of a grid (0, 0.1, ..., 1). On the split where
alpha is tuned (`tune_split`, "val"), the reported metrics are those of the best alpha (ties go to the larger alpha,
the main classifier), and `on_validation_end` stores that alpha in the `alpha` buffer, so it is saved with the
checkpoint of these weights; every other split (test, train_eval, mode=eval/predict) is scored with the stored alpha.
Also reported: the accuracy of each classifier alone (acc_main, acc_aux), the alpha used, and the center loss.
The model's outputs are a dict with "logits", "aux_logits" and "embedding" (models/backbone_glu.py).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .classification import ClassificationHead, save_confusion


class CenterLossClassificationHead(ClassificationHead):
    def __init__(self, num_classes: int, class_names: Sequence[str] | None = None, embed_dim: int = 64,
                 center_weight: float = 0.25, aux_weight: float = 0.25, label_smoothing: float = 0.0,
                 alpha_steps: int = 10, tune_split: str = "val", per_class_metrics: bool = True,
                 save_confusion: Sequence[str] = ("test",)):
        super().__init__(num_classes, class_names, label_smoothing, per_class_metrics, save_confusion)
        self.center_weight, self.aux_weight, self.tune_split = center_weight, aux_weight, tune_split
        # Keras's default Embedding initialiser, as the original's centres: uniform(-0.05, 0.05).
        self.centers = nn.Parameter(torch.empty(num_classes, embed_dim).uniform_(-0.05, 0.05))
        self.register_buffer("alphas", torch.linspace(0.0, 1.0, alpha_steps + 1), persistent=False)
        self.register_buffer("alpha", torch.tensor(1.0))  # saved with the checkpoint

    # ---- training ----
    def center_loss(self, outputs: dict[str, torch.Tensor], y: torch.Tensor) -> torch.Tensor:
        """Per-sample squared distance to the class centre, (B,)."""
        return (outputs["embedding"].float() - self.centers[y]).pow(2).sum(1)

    def loss(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> torch.Tensor:
        y = batch["y"]
        main = F.cross_entropy(outputs["logits"].float(), y, label_smoothing=self.label_smoothing)
        aux = F.cross_entropy(outputs["aux_logits"].float(), y, label_smoothing=self.label_smoothing)
        return main + self.aux_weight * aux + self.center_weight * self.center_loss(outputs, y).mean()

    # ---- prediction ----
    def blend(self, outputs: dict[str, torch.Tensor], alpha: torch.Tensor) -> torch.Tensor:
        """alpha * softmax(main) + (1 - alpha) * softmax(aux); alpha a scalar or (G,) -> (G, B, C)."""
        p_main = outputs["logits"].float().softmax(-1)
        p_aux = outputs["aux_logits"].float().softmax(-1)
        a = alpha.reshape(-1, 1, 1)
        return a * p_main + (1 - a) * p_aux

    def predict(self, outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.blend(outputs, self.alpha)[0].argmax(-1)

    # ---- evaluation ----
    def update(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> None:
        y = batch["y"]
        c, g = self.num_classes, len(self.alphas)
        n = torch.tensor(float(len(y)), device=y.device, dtype=torch.float64)
        self.accumulate("loss_sum", self.loss(outputs, batch).double() * n)
        self.accumulate("center_sum", self.center_loss(outputs, y).sum().double())
        self.accumulate("main_right", (outputs["logits"].argmax(-1) == y).sum().double())
        self.accumulate("aux_right", (outputs["aux_logits"].argmax(-1) == y).sum().double())
        pred = self.blend(outputs, self.alphas).argmax(-1)  # (G, B)
        cell = torch.arange(g, device=y.device)[:, None] * c * c + y[None, :] * c + pred
        self.accumulate("confusion_by_alpha", torch.bincount(cell.flatten(), minlength=g * c * c).view(g, c, c).double())

    def _chosen(self, sums: dict[str, torch.Tensor], split: str | None) -> int:
        """Index into the alpha grid: the best on the tuning split, else the stored alpha."""
        if split == self.tune_split:
            right = sums["confusion_by_alpha"].diagonal(dim1=1, dim2=2).sum(1)
            best = right.max()
            return int(torch.nonzero(right == best).flatten()[-1])  # ties: the larger alpha
        return int((self.alphas.cpu() - self.alpha.cpu()).abs().argmin())

    def compute(self) -> dict[str, float]:
        s = self.sums()
        if not s:
            return {}
        g = self._chosen(s, self.split)
        confusion = s["confusion_by_alpha"][g]
        n = float(confusion.sum().clamp(min=1))
        metrics = {"loss": float(s["loss_sum"]) / n}
        metrics.update(self.confusion_metrics(confusion))
        metrics.update(acc_main=float(s["main_right"]) / n, acc_aux=float(s["aux_right"]) / n,
                       alpha=float(self.alphas[g]), center_loss=float(s["center_sum"]) / n)
        return metrics

    def on_validation_end(self, split: str, run_dir: Path | None) -> None:
        if "confusion_by_alpha" not in self.reduced:
            return
        s = self.reduced
        g = self._chosen(s, split)
        if split == self.tune_split:
            self.alpha.fill_(float(self.alphas[g]))
        if run_dir is not None and split in self.save_confusion:
            save_confusion(s["confusion_by_alpha"][g].long(), self.class_names, run_dir / f"confusion_{split}.csv",
                           run_dir / f"confusion_{split}.png",
                           title=f"{split}: confusion at alpha={float(self.alphas[g]):.1f} (rows: true class)")
