"""A polarity decision per View (problem 1, aspect sentiment): a classifier over the tagger's states of one span.

Why: the character tagger learns where the Views are, not what is said about them. Its per-character loss is
dominated by 'none' and neutral characters (87.5% of the contest's Views are neutral), and the majority of its tags
inside a found View calls that View positive or negative more often wrongly than rightly. This module decides the
polarity of a span once, from the span and the text around it, with a loss of its own over the gold Views alone.

Each span (row, start, end) is read from a local window of the model's per-character states (`outputs["states"]`):
the `context` characters before it, the span, the `context` characters after it. Its features are the mean and the
max of the states over the span, the means over the left and the right context, and (with `attention`) an
attention-weighted mean over the window, the query made from the span's mean and a learned score per position
relative to the span (so that "很好" just after the View can weigh more than a word ten characters away). With
`inside: false` the span's own states are left out (the mean and the max, and the span in the attention's window,
whose query is then the context's mean): the polarity is read from what is said around the View, not from which View
it is. A hidden layer maps them to the three polarity scores (positive, neutral, negative).

The classifier is part of the model (`model.span_classifier`, see `trainer.models.bigru_tagger`), so that its
weights and its config travel with the checkpoint; the model returns it in its outputs and the head calls it on the
spans it decodes, which are known only after decoding. `neutral_bias`, added to the neutral score when deciding, is
a buffer saved with it: the head may choose it on validation (`head.neutral_bias_grid`).

`gold_spans` reads the spans to train on from a batch's tags: each maximal run of one non-zero tag.

`HashedCharNgrams` gives the classifier other states to read: at each position, the summed embeddings of the
character n-grams that start there, hashed into a fixed number of buckets, as fastText (Joulin et al., 2016, "Bag
of Tricks for Efficient Text Classification") represents text. Averaged over the context, they are a bag of the
n-grams around the View, the features of a TF-IDF linear model, learned end to end.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

NUM_POLARITIES = 3  # tags 1, 2, 3: positive, neutral, negative


def gold_spans(tags: torch.Tensor) -> torch.Tensor:
    """(K, 4) rows of (row, start, end, tag) for each maximal run of one non-zero tag in (N, L) `tags` (negative
    values, the ignore index of padding, count as 0), in row-major order."""
    t = tags.clamp(min=0)
    pad = torch.zeros_like(t[:, :1])
    before, after = torch.cat([pad, t[:, :-1]], 1), torch.cat([t[:, 1:], pad], 1)
    starts = torch.nonzero((t > 0) & (t != before))
    ends = torch.nonzero((t > 0) & (t != after))
    return torch.stack([starts[:, 0], starts[:, 1], ends[:, 1] + 1, t[starts[:, 0], starts[:, 1]]], 1)


class PolarityDecider(nn.Module):
    """What the head asks of a per-View polarity classifier: `forward(states, spans, lengths)` gives (K, 3) scores;
    `decide` turns them into tags with the saved or a trial neutral bias; `loss` trains on a batch's gold Views."""

    ema_skip = ("neutral_bias",)  # chosen on validation, not trained: a weight average must not blend it

    def __init__(self):
        super().__init__()
        self.register_buffer("neutral_bias", torch.tensor(0.0))  # decode-time, chosen on validation, saved

    def decide(self, scores: torch.Tensor, biases: torch.Tensor | None = None) -> torch.Tensor:
        """(G, K) polarity tags 1..3 of K spans from their (K, 3) scores, with each of the G `biases` (default: the
        saved `neutral_bias` alone) added to the neutral score."""
        biases = self.neutral_bias[None] if biases is None else biases.to(scores.device)
        shift = torch.zeros(len(biases), 1, NUM_POLARITIES, device=scores.device)
        shift[:, 0, 1] = biases
        return (scores[None] + shift).argmax(-1) + 1

    def loss(self, states: torch.Tensor, tags: torch.Tensor, lengths: torch.Tensor,
             class_weight: torch.Tensor | None = None) -> torch.Tensor:
        """Cross-entropy of the gold spans' polarities (tags 1..3), weighted per class; 0 (with a graph) when the
        batch holds no View."""
        spans = gold_spans(tags)
        if not len(spans):  # every parameter in the graph: DDP expects a gradient for each, on every rank
            return states.sum() * 0.0 + sum(p.sum() for p in self.parameters()) * 0.0
        return F.cross_entropy(self(states, spans, lengths), spans[:, 3] - 1, weight=class_weight)


class SpanPolarity(PolarityDecider):
    """Polarity scores (K, 3) of K spans from (N, L, D) states; see the module docstring."""

    def __init__(self, input_dim: int, hidden: int = 64, context: int = 10, attention: bool = True,
                 dropout: float = 0.1, inside: bool = True):
        super().__init__()
        if input_dim < 1:
            raise ValueError(f"input_dim={input_dim}: must be >= 1")
        if context < 0 or not inside and context < 1:
            raise ValueError(f"context={context}: must be >= 0 (>= 1 when the span itself is not read)")
        self.context, self.attention, self.inside = context, attention, inside
        parts = (4 if inside else 2) + attention
        if attention:
            self.query = nn.Linear(input_dim, input_dim)
            # one learned score per position relative to the span: -context..-1 before, 0 inside, 1..context after
            self.position = nn.Parameter(torch.zeros(2 * context + 1))
        self.mlp = nn.Sequential(nn.Linear(parts * input_dim, hidden), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, NUM_POLARITIES))

    def windows(self, states: torch.Tensor, spans: torch.Tensor,
                lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The (K, M + 2C, D) states around each span (M: the longest span), whether each position lies inside its
        sentence, and each position's place relative to its span (-C..-1 before, 0 inside, 1..C after; beyond the
        span's own end inside the window: above C, never read)."""
        rows, a, b = spans[:, 0], spans[:, 1], spans[:, 2]
        c = self.context
        width = int((b - a).max()) + 2 * c if len(spans) else 2 * c + 1  # one host sync per call, not per span
        pos = a[:, None] - c + torch.arange(width, device=states.device)[None, :]  # (K, width)
        valid = (pos >= 0) & (pos < lengths[rows][:, None])
        gathered = states[rows[:, None], pos.clamp(0, states.shape[1] - 1)]  # (K, width, D)
        rel = torch.where(pos < a[:, None], pos - a[:, None],
                          torch.where(pos < b[:, None], torch.zeros_like(pos), pos - b[:, None] + 1))
        valid = valid & (rel <= c)
        return gathered, valid, rel

    def features(self, states: torch.Tensor, spans: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(K, parts * D) pooled features of each span (see the module docstring)."""
        h, valid, rel = self.windows(states, spans, lengths)
        inside, left, right = valid & (rel == 0), valid & (rel < 0), valid & (rel > 0)
        pooled = [_mean(h, left), _mean(h, right)]
        if self.inside:
            pooled = [_mean(h, inside), h.masked_fill(~inside[..., None], float("-inf")).amax(1)] + pooled
        else:
            valid = valid & ~inside
        if self.attention:
            q = self.query(pooled[0] if self.inside else _mean(h, valid))  # (K, D)
            score = (h * q[:, None, :]).sum(-1) / h.shape[-1] ** 0.5
            score = score + self.position[(rel + self.context).clamp(0, 2 * self.context)]
            weight = score.masked_fill(~valid, float("-inf")).softmax(1)
            pooled.append((weight[..., None] * h).sum(1))
        return torch.cat(pooled, -1)

    def forward(self, states: torch.Tensor, spans: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(K, 3) scores of positive, neutral, negative for the K spans (row, start, end, ...) of `states`, whose
        rows have `lengths` characters."""
        return self.mlp(self.features(states, spans, lengths))

class HashedCharNgrams(nn.Module):
    """(W, T, dim) per-position sums of the embeddings of the character n-grams (orders 1..max_order) that start at
    each position of (W, T) character ids (0: padding), each n-gram hashed into one of `buckets` rows. An n-gram
    that runs into the padding adds nothing."""

    def __init__(self, buckets: int, dim: int = 32, max_order: int = 3):
        super().__init__()
        if buckets < 1 or dim < 1 or max_order < 1:
            raise ValueError(f"buckets={buckets}, dim={dim}, max_order={max_order}: each must be >= 1")
        self.buckets, self.max_order = buckets, max_order
        self.embedding = nn.Embedding(buckets, dim)
        nn.init.normal_(self.embedding.weight, std=0.1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        buckets, real = ngram_buckets(ids, self.buckets, self.max_order)
        return (self.embedding(buckets) * real[..., None]).sum(2)


# a polynomial hash modulo a prime, small enough that no product leaves int64
_MULTIPLIER, _PRIME = 0x5BD1E995, (1 << 31) - 1


def ngram_buckets(ids: torch.Tensor, buckets: int, max_order: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(W, T, max_order) bucket of the n-gram of each order 1..max_order that starts at each position of (W, T)
    ids (0: padding), and whether it is real: an n-gram that runs into the padding is not."""
    ids = ids.long()
    key, real = torch.zeros_like(ids), torch.ones_like(ids, dtype=torch.bool)
    out, keep = [], []
    for n in range(max_order):
        shifted = F.pad(ids[:, n:], (0, n))  # the n-th character after each position (0 past the end)
        key = (key + shifted + 1) * _MULTIPLIER % _PRIME
        real = real & (shifted != 0)
        out.append((key + n) % buckets)
        keep.append(real)
    return torch.stack(out, -1), torch.stack(keep, -1)


def _mean(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(K, D) mean of (K, P, D) `h` over the positions of (K, P) `mask` (0 where it has none)."""
    m = mask[..., None].to(h.dtype)
    return (h * m).sum(1) / m.sum(1).clamp(min=1.0)
