"""Next-token language-model head with an adaptive softmax (Grave et al. 2017, "Efficient softmax approximation
for GPUs"; torch.nn.AdaptiveLogSoftmaxWithLoss): the most frequent words are scored from the full hidden state, the
rarer ones in clusters of smaller projections, so a step costs a fraction of a full softmax over the vocabulary
while the model stays a proper distribution over every word (perplexity is exact, not an estimate).

The head owns the output layer (its parameters are `head.softmax.*`); the model returns `{"hidden": (B, T, H)}`
(text_models.LanguageModel with decoder: false), or `{"hidden": (B, H)}`, one state per sample that scores all of
its (B, T) targets (output: mean, a bag of words: the full distribution is computed once per sample, not once per
target). Vocabulary ids must be ordered by frequency (the review vocabularies are).
`batch["y"]` holds the target ids with -100 on padding. Metrics as heads/language_model.py: loss (mean NLL per
predicted token over the split), perplexity = exp(loss), accuracy of the most likely word.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from .language_model import IGNORE, NextTokenHead


def cutoffs_for(vocab_size: int, cutoffs: Sequence[float]) -> list[int]:
    """Cluster boundaries as ids; a value below 1 is a fraction of the vocabulary."""
    out = []
    for c in cutoffs:
        c = int(round(c * vocab_size)) if c < 1 else int(c)
        if 1 <= c < vocab_size - 1 and (not out or c > out[-1]):
            out.append(c)
    return out or [max(vocab_size // 2, 1)]


class AdaptiveSoftmaxHead(NextTokenHead):
    """The metrics (`compute`) are NextTokenHead's, over the same sums."""

    def __init__(self, hidden: int, vocab_size: int, cutoffs: Sequence[float] = (0.2, 0.6), div_value: float = 4.0):
        super().__init__()
        self.softmax = nn.AdaptiveLogSoftmaxWithLoss(hidden, vocab_size, cutoffs_for(vocab_size, cutoffs),
                                                     div_value=div_value)

    def _flat(self, outputs: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        h = outputs["hidden"]
        y = batch["y"].reshape(-1)
        keep = y != IGNORE
        return h.reshape(-1, h.shape[-1])[keep].float(), y[keep]

    def _sample_log_probs(self, outputs: Any) -> torch.Tensor | None:
        h = outputs["hidden"]
        return self.softmax.log_prob(h.float()) if h.ndim == 2 else None

    def _token_loss(self, outputs: Any, batch: dict[str, Any]) -> torch.Tensor:
        h, y = self._flat(outputs, batch)
        return self.softmax(h, y).loss

    def _token_sums(self, outputs: Any, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        h, y = self._flat(outputs, batch)
        return {"nll_sum": -self.softmax(h, y).output.sum(), "tokens": torch.tensor(float(len(y)), device=h.device),
                "correct": (self.softmax.predict(h) == y).sum()}

    def decode(self, outputs: Any, batch: dict[str, Any]) -> list[int]:
        h = outputs["hidden"]
        return self.softmax.predict(h.reshape(-1, h.shape[-1]).float()).reshape(h.shape[:-1]).tolist()
