"""The one inference path: `infer` yields (outputs, batch) over a loader; validation, the final test, `mode=eval`
(`score`), `mode=predict` and pseudo-labelling (`pseudo_label`) all read it. Given a `progress` description, a pass
shows a bar in a terminal and logs a line now and then in a pipe (`progress.Activity`), so none of them is silent."""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from torch import nn

from .errors import UserError
from .progress import Activity


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    non_blocking = device.type == "cuda"
    return {k: v.to(device, non_blocking=non_blocking) if torch.is_tensor(v) else v for k, v in batch.items()}


def batch_size_of(batch: dict[str, Any]) -> int:
    return len(batch["x"])


def autocast_context(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def infer(net: nn.Module, loader, device: torch.device, precision: str,
          progress: str | None = None) -> Iterator[tuple[Any, dict[str, Any]]]:
    """(outputs, batch) for each batch of `loader`, the net in eval mode (and left so). Iterate it under
    `torch.inference_mode()`. `progress`: what to call the pass on the console (None: nothing shown)."""
    net.eval()
    with Activity(progress or "", _batches(loader), count_name=" batches", enabled=progress is not None) as shown:
        for batch in loader:
            n = batch_size_of(batch)
            if n == 0:  # this rank's slice of a final batch smaller than the world size
                continue
            batch = to_device(batch, device)
            with autocast_context(device, precision):
                outputs = net.model(batch["x"])
            yield outputs, batch
            shown.advance(1, n)


def _batches(loader) -> int | None:
    try:
        return len(loader)
    except TypeError:  # an iterable without a length
        return None


@torch.inference_mode()
def score(net: nn.Module, loader, device: torch.device, precision: str, split: str,
          progress: bool = True) -> dict[str, float]:
    """The head's metrics over `loader`, reduced over ranks. The head is told the split (`head.split`), for heads whose
    metrics depend on it (a decode setting tuned on validation and only applied elsewhere)."""
    head = net.head
    head.reset()
    head.split = split
    for outputs, batch in infer(net, loader, device, precision, progress=split if progress else None):
        head.update(outputs, batch)
    return head.compute()


@torch.inference_mode()
def predict(net: nn.Module, loader, device: torch.device, precision: str, progress: bool = True) -> list[Any]:
    """The head's decoded prediction of every sample, in loader order."""
    out: list[Any] = []
    for outputs, batch in infer(net, loader, device, precision, progress="predict" if progress else None):
        out.extend(net.head.decode(outputs, batch))
    return out


@torch.inference_mode()
def pseudo_label(net: nn.Module, loader, device: torch.device, precision: str, threshold: float,
                 max_items: int | None = None, balance: bool = False) -> tuple[list[int], list[Any], int]:
    """Self-training: the head's label and confidence for each sample of `loader` (read in order); the positions and
    labels of those at or above `threshold`, at most the `max_items` most confident; and how many were labelled.
    `balance`: as many of each predicted class, the most confident, as the class with fewest has (a teacher that
    leans to one class would otherwise teach its student to lean further, round after round)."""
    if not callable(getattr(net.head, "pseudo_label", None)):
        raise UserError(f"{type(net.head).__name__} has no pseudo_label method; drop the stage's pseudo_label option")
    labels: list[Any] = []
    confidences: list[torch.Tensor] = []
    for outputs, batch in infer(net, loader, device, precision, progress="pseudo-labelling"):
        batch_labels, confidence = net.head.pseudo_label(outputs, batch)
        labels.extend(batch_labels)
        confidences.append(confidence.detach().float().reshape(-1))
    conf = torch.cat(confidences).cpu() if confidences else torch.zeros(0)
    keep = torch.nonzero(conf >= threshold).flatten()
    if balance:
        keep = _balanced(keep, conf, labels, max_items)
    elif max_items is not None:
        keep = _most_confident(keep, conf, max_items).sort().values
    indices = keep.tolist()
    return indices, [labels[i] for i in indices], len(labels)


def _balanced(keep: torch.Tensor, conf: torch.Tensor, labels: list[Any], max_items: int | None) -> torch.Tensor:
    """The most confident of `keep`, the same number of each class that the head predicted for any sample."""
    if not all(isinstance(label, int) for label in labels):
        raise UserError("pseudo_label.balance needs one class per item (a classification head); this head labels "
                        "items with structures: drop balance")
    classes = sorted(set(labels))
    by_class: dict[int, list[int]] = {c: [] for c in classes}
    for i in keep.tolist():
        by_class[labels[i]].append(i)
    n = min((len(v) for v in by_class.values()), default=0)
    if max_items is not None:
        n = min(n, max_items // max(len(classes), 1))
    chosen = [_most_confident(torch.tensor(by_class[c], dtype=torch.long), conf, n) for c in classes]
    return torch.cat(chosen).sort().values if chosen else keep[:0]


def _most_confident(indices: torch.Tensor, conf: torch.Tensor, n: int) -> torch.Tensor:
    """The `n` of `indices` with the highest confidence (ties: the earlier first), most confident first."""
    return indices[conf[indices].argsort(descending=True, stable=True)[:n]]
