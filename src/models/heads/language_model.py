"""Head for next-token language models: cross-entropy over the vocabulary; loss, perplexity and accuracy.

The model's output is logits over the vocabulary, (B, V) when each sample predicts one next token (a window of the
previous tokens, as the character LM of problem 1 and the word LM of problem 4 do), or (B, T, V) when each position
of a sequence predicts the next (truncated back-propagation through time), or (B, V) with (B, T) targets when one
distribution per sample scores all the words of its chunk (a bag-of-words autoencoder,
`LanguageModel(output=mean)`). `batch["y"]` holds the target ids, (B,) or (B, T), with `ignore_index` (-100) at
padded positions. Perplexity is exp of the mean negative log-likelihood per predicted token, summed over the whole
split before the exp (as language-modelling papers report it), not an average of per-batch perplexities. A bag's
targets may carry weights, `batch["w"]` (B, T) (TF-IDF: `ChunkDataset`): the loss and metrics are then weighted means.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from .base import Head
from .classification import logits_of

IGNORE = -100


def bag_sums(logp: torch.Tensor, y: torch.Tensor, ignore_index: int = IGNORE, correct: bool = True,
             weight: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Sums over a batch of bags: (B, V) log-probabilities, one distribution per sample, and (B, T) target words
    of each (`ignore_index` on padding) -> the summed negative log-likelihood, the number of targets, and (with
    `correct`) how many were their sample's most likely word. With a (B, T) `weight` per target, each of the three
    is a weighted sum. Masked sums: no host sync."""
    counted = y != ignore_index
    w = counted.to(logp.dtype) if weight is None else torch.where(counted, weight.to(logp.dtype), 0.0)
    sums = {"nll_sum": -(w * logp.gather(1, y.clamp(min=0))).sum(), "tokens": w.sum()}
    if correct:
        sums["correct"] = (w * (logp.argmax(1, keepdim=True) == y)).sum()
    return sums


class NextTokenHead(Head):
    monitor, monitor_mode = "loss", "min"

    def __init__(self, ignore_index: int = IGNORE):
        super().__init__()
        self.ignore_index = ignore_index

    def _flat(self, outputs: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        logits = logits_of(outputs)
        return logits.reshape(-1, logits.shape[-1]).float(), batch["y"].reshape(-1)

    def _sample_log_probs(self, outputs: Any) -> torch.Tensor | None:
        """(B, V) log-probabilities when the output is one distribution per sample, else None."""
        logits = logits_of(outputs)
        return logits.float().log_softmax(-1) if logits.ndim == 2 else None

    def _bag(self, outputs: Any, batch: dict[str, Any], correct: bool) -> dict[str, torch.Tensor] | None:
        """bag_sums when one distribution per sample meets (B, T) targets (a bag of words), else None."""
        if batch["y"].ndim != 2:
            return None
        logp = self._sample_log_probs(outputs)
        return None if logp is None else bag_sums(logp, batch["y"], self.ignore_index, correct, batch.get("w"))

    def _token_loss(self, outputs: Any, batch: dict[str, Any]) -> torch.Tensor:
        logits, y = self._flat(outputs, batch)
        return F.cross_entropy(logits, y, ignore_index=self.ignore_index)

    def _token_sums(self, outputs: Any, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        logits, y = self._flat(outputs, batch)
        counted = y != self.ignore_index
        return {"nll_sum": F.cross_entropy(logits, y, ignore_index=self.ignore_index, reduction="sum"),
                "tokens": counted.sum(), "correct": ((logits.argmax(-1) == y) & counted).sum()}

    def loss(self, outputs: Any, batch: dict[str, Any]) -> torch.Tensor:
        bag = self._bag(outputs, batch, correct=False)
        if bag is None:
            return self._token_loss(outputs, batch)
        return bag["nll_sum"] / bag["tokens"].clamp(min=1)

    def update(self, outputs: Any, batch: dict[str, Any]) -> None:
        sums = self._bag(outputs, batch, correct=True)
        for key, value in (self._token_sums(outputs, batch) if sums is None else sums).items():
            self.accumulate(key, value.double())

    def compute(self) -> dict[str, float]:
        s = self.sums()
        if not s:
            return {}
        tokens = float(s["tokens"].clamp(min=1))
        nll = float(s["nll_sum"]) / tokens
        return {"loss": nll, "perplexity": math.exp(min(nll, 50.0)), "acc": float(s["correct"]) / tokens}

    def decode(self, outputs: Any, batch: dict[str, Any]) -> list[int]:
        """The most likely next token id of each sample (of each position, for sequence outputs; for a bag, the
        most likely word of the sample's chunk)."""
        return logits_of(outputs).argmax(-1).tolist()
