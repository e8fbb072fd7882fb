"""A linear polarity decision per View from the characters around it (problem 1, aspect sentiment).

The simple strong baseline of problem 1 (`bench/absa_dictionary_baseline.py --polarity context`) decides each
View's polarity with a logistic regression on the TF-IDF of the character 1- to 3-grams in a window of 40
characters each side, the View itself replaced by one mask character; it reads polarity better than any classifier
over the tagger's states that we tried (docs/results.md). This is that model inside ours, so that it trains with
the tagger, is chosen on validation with it, and travels in its checkpoint:

- each View's window is `context` characters before it, a mask, `context` characters after it, cut at the
  sentence's ends;
- its character n-grams of orders 1..`max_order` are hashed into `buckets` (as `HashedCharNgrams` does: no
  vocabulary to fit, so nothing is read from data before training);
- each n-gram's weight in the window is 1 + log(count) (as the baseline's `sublinear_tf`), and the window's vector
  is scaled to unit length;
- the scores of positive, neutral and negative are a linear function of that vector: one weight per bucket and
  polarity, and a bias. The trainer's weight decay is its L2 penalty.

The baseline's inverse document frequency is left out: it would need a pass over the data before training, and
the regression on hashed n-grams without it scores as well as the baseline (0.820 against 0.818 test triple F1;
`bench/absa_context_variants.py`, docs/results.md).

The model hands it the character ids as its "states" (`BiGRUTagger(span_linear=True)`), so that the head stitches
whole sentences from their windows as it does for any span classifier.
"""
from __future__ import annotations

import torch
from torch import nn

from .span_polarity import NUM_POLARITIES, PolarityDecider, ngram_buckets

PAD, MASK = 0, 1  # window ids: a character id c becomes c + 2


class ContextNgramPolarity(PolarityDecider):
    """(K, 3) linear scores of K spans from the character ids around them; see the module docstring."""

    def __init__(self, buckets: int = 1 << 18, context: int = 40, max_order: int = 3):
        super().__init__()
        if buckets < 1 or context < 1 or max_order < 1:
            raise ValueError(f"buckets={buckets}, context={context}, max_order={max_order}: each must be >= 1")
        self.buckets, self.context, self.max_order = buckets, context, max_order
        self.weight = nn.Parameter(torch.zeros(buckets, NUM_POLARITIES))
        self.bias = nn.Parameter(torch.zeros(NUM_POLARITIES))

    def windows(self, ids: torch.Tensor, spans: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(K, 2 * context + 1) window ids of each span (row, start, end, ...) of (N, L) character `ids`: the
        characters before it, MASK, the characters after it, PAD beyond the sentence."""
        rows, a, b, c = spans[:, 0], spans[:, 1], spans[:, 2], self.context
        offsets = torch.arange(c, device=ids.device)
        before, after = a[:, None] - c + offsets, b[:, None] + offsets  # (K, c) each
        pos = torch.cat([before, after], 1)
        inside = (pos >= 0) & (pos < lengths[rows][:, None])
        chars = torch.where(inside, ids[rows[:, None], pos.clamp(0, ids.shape[1] - 1)] + 2, PAD)
        mask = torch.full_like(a[:, None], MASK)
        return torch.cat([chars[:, :c], mask, chars[:, c:]], 1)

    def features(self, ids: torch.Tensor, spans: torch.Tensor,
                 lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The window vectors as sparse rows: for each (span, bucket) that occurs, the span's index, the bucket and
        its weight (each span's weights of unit length)."""
        buckets, real = ngram_buckets(self.windows(ids, spans, lengths), self.buckets, self.max_order)
        span_of = torch.arange(len(spans), device=ids.device)[:, None, None].expand_as(buckets)
        keys, counts = torch.unique(span_of[real] * self.buckets + buckets[real], return_counts=True)
        k, bucket = keys // self.buckets, keys % self.buckets
        tf = 1.0 + counts.float().log()
        norm = torch.zeros(len(spans), device=ids.device).index_add_(0, k, tf * tf).sqrt()
        return k, bucket, tf / norm[k]

    def forward(self, states: torch.Tensor, spans: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(K, 3) scores of positive, neutral, negative for the K spans of (N, L, 1) `states`: the character ids,
        as floats (what the tagger hands its span classifier)."""
        k, bucket, value = self.features(states[..., 0].round().long(), spans, lengths)
        scores = torch.zeros(len(spans), NUM_POLARITIES, device=states.device, dtype=self.weight.dtype)
        return scores.index_add(0, k, value[:, None] * self.weight[bucket]) + self.bias
