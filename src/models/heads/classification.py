"""Single-label classification: softmax cross-entropy; accuracy, per-class accuracy, macro-F1, confusion matrix.

Every metric comes from one confusion matrix of counts accumulated on the device (rows = true class, columns =
predicted), so the numbers are exact under DDP after one all-reduce:
  - acc: trace / total;
  - acc_<class>: per-class accuracy (recall of that class: its diagonal over its row), the usual "per-class accuracy"
    of image classification reports;
  - macro_f1: the unweighted mean of 2PR/(P+R) over the classes that occur as truth or prediction (scikit-learn's
    f1_score(average="macro"); a class that is predicted but never right, or never predicted, counts as 0).
  - f1_<class> (with `per_class_f1`): each class's F1, the terms of that mean.
The training loss is `loss: ce` (cross-entropy) or `loss: soft_macro_f1`: 1 - the mean over classes of a
differentiable F1 with the softmax probabilities standing in for the 0/1 predictions, TP = sum p*y, FP = sum p*(1-y),
FN = sum (1-p)*y over the batch (the LAMOST contest's second stage; a batch needs every class in it, e.g. the
ClassShareBatches plan).
At the end of the splits listed in `save_confusion` the matrix is written to the run directory as
confusion_<split>.csv (counts, with class names) and confusion_<split>.png (row-normalised heat map).

The model's output is the logits (B, C), or a dict holding them under "logits".
"""
from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Annotated, Any, Sequence

import torch
import torch.nn.functional as F
from annotated_types import Interval

from .base import Head


def logits_of(outputs: Any) -> torch.Tensor:
    return outputs["logits"] if isinstance(outputs, dict) else outputs


def metric_name(class_name: str) -> str:
    """A class name as a metric/column suffix: 'T-shirt/top' -> 't_shirt_top'."""
    return re.sub(r"[^0-9a-z]+", "_", str(class_name).lower()).strip("_") or "class"


class ClassificationHead(Head):
    monitor, monitor_mode = "acc", "max"

    def __init__(self, num_classes: int, class_names: Sequence[str] | None = None,
                 label_smoothing: Annotated[float, Interval(ge=0, lt=1)] = 0.0,
                 per_class_metrics: bool = True, save_confusion: Sequence[str] = ("test",), loss: str = "ce",
                 per_class_f1: bool = False):
        super().__init__()
        if loss not in ("ce", "soft_macro_f1"):
            raise ValueError(f"head.loss='{loss}' is not one of ce, soft_macro_f1")
        self.loss_name, self.per_class_f1 = loss, per_class_f1
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
        self.num_classes = num_classes
        self.class_names = [str(c) for c in class_names] if class_names is not None else \
            [str(i) for i in range(num_classes)]
        self.label_smoothing, self.per_class_metrics = label_smoothing, per_class_metrics
        self.save_confusion = list(save_confusion or [])

    # ---- training ----
    def loss(self, outputs: Any, batch: dict[str, Any]) -> torch.Tensor:
        if self.loss_name == "soft_macro_f1":
            return soft_macro_f1_loss(logits_of(outputs).float(), batch["y"], self.num_classes)
        return F.cross_entropy(logits_of(outputs).float(), batch["y"], label_smoothing=self.label_smoothing)

    # ---- evaluation ----
    def predict(self, outputs: Any) -> torch.Tensor:
        """Class index per sample (subclasses may blend several outputs)."""
        return logits_of(outputs).argmax(-1)

    def update(self, outputs: Any, batch: dict[str, Any]) -> None:
        y = batch["y"]
        logits = logits_of(outputs).float()
        self.accumulate("loss_sum", F.cross_entropy(logits, y, reduction="sum").double())
        self.accumulate("confusion", self.confusion_counts(y, self.predict(outputs)))

    def confusion_counts(self, y: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        c = self.num_classes
        return torch.bincount(y * c + pred, minlength=c * c).view(c, c).double()

    def compute(self) -> dict[str, float]:
        s = self.sums()
        if not s:
            return {}
        metrics = {"loss": float(s["loss_sum"] / s["confusion"].sum().clamp(min=1))}
        metrics.update(self.confusion_metrics(s["confusion"]))
        return metrics

    def confusion_metrics(self, confusion: torch.Tensor) -> dict[str, float]:
        total = confusion.sum().clamp(min=1)
        diag = confusion.diagonal()
        true_n, pred_n = confusion.sum(1), confusion.sum(0)
        precision = diag / pred_n.clamp(min=1)
        recall = diag / true_n.clamp(min=1)
        f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-12),
                         torch.zeros_like(precision))
        present = (true_n + pred_n) > 0  # scikit-learn averages over the labels in y_true or y_pred only
        metrics = {"acc": float(diag.sum() / total), "macro_f1": float(f1[present].mean()) if present.any() else 0.0}
        if self.per_class_metrics:
            for name, value in zip(self.class_names, recall.tolist()):
                metrics[f"acc_{metric_name(name)}"] = value
        if self.per_class_f1:
            for name, value in zip(self.class_names, f1.tolist()):
                metrics[f"f1_{metric_name(name)}"] = value
        return metrics

    def on_validation_end(self, split: str, run_dir: Path | None) -> None:
        if run_dir is None or split not in self.save_confusion or "confusion" not in self.reduced:
            return
        confusion = self.reduced["confusion"].long()
        save_confusion(confusion, self.class_names, run_dir / f"confusion_{split}.csv",
                       run_dir / f"confusion_{split}.png", title=f"{split}: confusion (rows: true class)")

    # ---- prediction ----
    def decode(self, outputs: Any, batch: dict[str, Any]) -> list[str]:
        return [self.class_names[i] for i in self.predict(outputs).tolist()]

    def pseudo_label(self, outputs: Any, batch: dict[str, Any]) -> tuple[list[int], torch.Tensor]:
        """Self-training: the predicted class index of each sample, and its softmax probability as the confidence."""
        confidence, label = logits_of(outputs).float().softmax(-1).max(-1)
        return label.tolist(), confidence


def soft_macro_f1_loss(logits: torch.Tensor, y: torch.Tensor, num_classes: int, eps: float = 1e-7) -> torch.Tensor:
    """1 - mean over classes of the batch's soft F1 (probabilities in place of hard predictions). A class absent
    from the batch and never predicted has F1 0/eps = 0 and no gradient."""
    p = logits.softmax(-1)
    onehot = F.one_hot(y, num_classes).to(p.dtype)
    tp = (p * onehot).sum(0)
    fp = (p * (1 - onehot)).sum(0)
    fn = ((1 - p) * onehot).sum(0)
    return 1 - (2 * tp / (2 * tp + fp + fn + eps)).mean()


def save_confusion(confusion: torch.Tensor, class_names: Sequence[str], csv_path: Path, png_path: Path,
                   title: str = "") -> None:
    """Counts as CSV (first column the true class, header the predicted classes) and a row-normalised heat map."""
    counts = confusion.tolist()
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["true \\ predicted", *class_names])
        for name, row in zip(class_names, counts):
            writer.writerow([name, *row])

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = len(class_names)
    rates = confusion.double() / confusion.sum(1, keepdim=True).clamp(min=1)
    size = min(max(4.0, 0.55 * c + 2), 30.0)
    fig, ax = plt.subplots(figsize=(size, size * 0.9))
    im = ax.imshow(rates.numpy(), cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(c), class_names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(c), class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if c <= 30:
        for i in range(c):
            for j in range(c):
                if counts[i][j]:
                    ax.text(j, i, str(counts[i][j]), ha="center", va="center", fontsize=7,
                            color="white" if rates[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
