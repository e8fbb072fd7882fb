"""Head for next-token language models: cross-entropy over the vocabulary; loss, perplexity and accuracy.

The model's output is logits over the vocabulary, (B, V) when each sample predicts one next token (a window of the
previous tokens, as the character LM of problem 1 and the word LM of problem 4 do), or (B, T, V) when each position
of a sequence predicts the next (truncated back-propagation through time). `batch["y"]` holds the target ids, (B,)
or (B, T), with `ignore_index` (-100) at padded positions. Perplexity is exp of the mean negative log-likelihood per
predicted token, summed over the whole split before the exp (as language-modelling papers report it), not an
average of per-batch perplexities.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from .base import Head
from .classification import logits_of

IGNORE = -100


class NextTokenHead(Head):
    monitor, monitor_mode = "loss", "min"

    def __init__(self, ignore_index: int = IGNORE):
        super().__init__()
        self.ignore_index = ignore_index

    def _flat(self, outputs: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        logits = logits_of(outputs)
        return logits.reshape(-1, logits.shape[-1]).float(), batch["y"].reshape(-1)

    def loss(self, outputs: Any, batch: dict[str, Any]) -> torch.Tensor:
        logits, y = self._flat(outputs, batch)
        return F.cross_entropy(logits, y, ignore_index=self.ignore_index)

    def update(self, outputs: Any, batch: dict[str, Any]) -> None:
        logits, y = self._flat(outputs, batch)
        counted = y != self.ignore_index
        self.accumulate("nll_sum", F.cross_entropy(logits, y, ignore_index=self.ignore_index,
                                                   reduction="sum").double())
        self.accumulate("tokens", counted.sum().double())
        self.accumulate("correct", ((logits.argmax(-1) == y) & counted).sum().double())

    def compute(self) -> dict[str, float]:
        s = self.sums()
        if not s:
            return {}
        tokens = float(s["tokens"].clamp(min=1))
        nll = float(s["nll_sum"]) / tokens
        return {"loss": nll, "perplexity": math.exp(min(nll, 50.0)), "acc": float(s["correct"]) / tokens}

    def decode(self, outputs: Any, batch: dict[str, Any]) -> list[int]:
        """The most likely next token id of each sample (of each position, for sequence outputs)."""
        return logits_of(outputs).argmax(-1).tolist()
