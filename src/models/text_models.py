"""A language model and a review classifier around one word encoder (models/text_encoders.py), for problem 4
(lm_sentiment). Both hold it as `self.encoder`, so a classifier stage takes the language model's encoder with
`init: {checkpoint: previous, include: ['^model\\.encoder\\.']}`.

- `LanguageModel`: next-token logits from every position (`output=all`: each position of a chunk predicts the next
  word) or from the last one (`output=last`: a window of previous words predicts the next, the original's stage 1:
  embedding 100, LSTM 1000, softmax over 10k words), or one distribution per chunk from the mean of its states
  (`output=mean`: the chunk's own words are its targets, a bag-of-words autoencoder). With `decoder=false` it
  returns the states (`{"hidden": (B, T, H)}`, or (B, H) for `mean`) and the head owns the output layer (an
  adaptive softmax, heads/adaptive_lm.py).
- `ReviewClassifier`: the encoder reads a review (right-padded); its states are pooled (`last`: the state after
  the last word, what the original's Keras LSTM returned; `concat`: last, max and mean over the words, ULMFiT's
  concat pooling, Howard & Ruder 2018); then Dense `hidden_units` + ReLU (none when 0), dropout, one logit (the
  original: Dense 10, ReLU, dropout 0.5, sigmoid). With `bag=true` a linear bag-of-words read-out sits beside it
  (wide and deep, Cheng et al. 2016): one weight per word, and per hashed pair of neighbouring words when
  `bag_pair_buckets` > 0, summed over every word and pair of the review, divided by the square root of their
  number and added to the logit: the features TF-IDF + logistic regression reads, trained with the rest.
  `bag_dropout` drops rows of its table in training as the encoders' `embed_dropout` drops words: the noise a
  self-training student reads its pseudo-labels with (experiment=lm_sentiment_self_training).
  With `bag_member=true` a second bag (`WordBag`, its own `bag_member_pair_buckets`) is a member of its own, not a
  part: it is trained by its own loss on the same labels (the head sums the members' losses), and the prediction
  is the mean of the two members' probabilities, returned as its logit (`{"logits", "members"}`). A linear model
  of the words errs on other reviews than the network does: fitted to the labels a self-trained network gives the
  unlabelled reviews, the average reads higher than either (experiment=lm_sentiment_bag_member, docs/results.md).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .text_encoders import PAD, word_dropout


class LanguageModel(nn.Module):
    def __init__(self, encoder: nn.Module, vocab_size: int, output: str = "all", decoder: bool = True):
        super().__init__()
        if output not in ("all", "last", "mean"):
            raise ValueError(f"output={output} is not all, last or mean")
        self.encoder, self.output = encoder, output
        self.decoder = nn.Linear(encoder.hidden, vocab_size) if decoder else None

    def forward(self, x: torch.Tensor) -> Any:
        h = self.encoder(x)
        if self.output == "last":  # windows are left-padded: the last position is the window's last word
            h = h[:, -1]
        elif self.output == "mean":
            h = masked_mean(h, x != PAD)
        return self.decoder(h) if self.decoder is not None else {"hidden": h}


class WordBag(nn.Embedding):
    """A linear bag of words: one weight per word, and per hashed pair of neighbouring words when `pair_buckets` >
    0, summed over the review and divided by the square root of their number: (B, T) ids -> (B,) logits. `dropout`
    drops rows of the table in training (the words it holds, as an encoder's `embed_dropout` does)."""

    def __init__(self, vocab_size: int, pair_buckets: int = 0, dropout: float = 0.0):
        super().__init__(vocab_size + pair_buckets, 1, padding_idx=PAD)
        nn.init.zeros_(self.weight)
        self.vocab_size, self.pair_buckets, self.dropout = vocab_size, pair_buckets, dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids = x
        if self.pair_buckets:
            # a fixed multiplicative hash of (word, next word) into the buckets after the vocabulary
            key = (x[:, :-1] * self.vocab_size + x[:, 1:]) * 2654435761 % self.pair_buckets + self.vocab_size
            pairs = key.masked_fill((x[:, :-1] == PAD) | (x[:, 1:] == PAD), PAD)
            ids = torch.cat([x, pairs], 1)
        count = (ids != PAD).sum(1).clamp(min=1)
        weights = word_dropout(self, ids, self.dropout, self.training).squeeze(-1)
        return weights.sum(1) / count.to(self.weight.dtype).sqrt()


class ReviewClassifier(nn.Module):
    def __init__(self, encoder: nn.Module, pooling: str = "last", hidden_units: int = 10, dropout: float = 0.5,
                 bag: bool = False, bag_pair_buckets: int = 0, bag_dropout: float = 0.0, bag_member: bool = False,
                 bag_member_pair_buckets: int = 0):
        super().__init__()
        if pooling not in ("last", "concat"):
            raise ValueError(f"pooling={pooling} is not last or concat")
        self.encoder, self.pooling = encoder, pooling
        features = encoder.hidden * (3 if pooling == "concat" else 1)
        layers: list[nn.Module] = []
        if hidden_units:
            layers += [nn.Linear(features, hidden_units), nn.ReLU()]
            features = hidden_units
        layers += [nn.Dropout(dropout), nn.Linear(features, 1)]
        self.classifier = nn.Sequential(*layers)
        vocab_size = encoder.embedding.num_embeddings
        self.bag = WordBag(vocab_size, bag_pair_buckets, bag_dropout) if bag else None
        self.bag_member = WordBag(vocab_size, bag_member_pair_buckets, bag_dropout) if bag_member else None

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(x)
        mask = (x != PAD).unsqueeze(-1)
        lengths = mask.sum(1)  # (B, 1)
        # the state after the last word; a review with no known word has only position 0
        last = h.gather(1, (lengths - 1).clamp(min=0).unsqueeze(-1).expand(-1, 1, h.shape[-1])).squeeze(1)
        if self.pooling == "last":
            return last
        mean = masked_mean(h, mask.squeeze(-1))
        top = h.masked_fill(~mask, torch.finfo(h.dtype).min).amax(1)
        top = torch.where(lengths > 0, top, torch.zeros_like(top))
        return torch.cat([last, top, mean], -1)

    def forward(self, x: torch.Tensor) -> Any:
        logit = self.classifier(self.pool(x)).squeeze(-1)
        if self.bag is not None:
            logit = logit + self.bag(x)
        if self.bag_member is None:
            return logit
        members = torch.stack([logit, self.bag_member(x)])
        return {"logits": mean_probability_logit(members), "members": members}


def mean_probability_logit(members: torch.Tensor) -> torch.Tensor:
    """(B,) the logit of the mean of sigmoid(members) over the first dimension: log(mean p) - log(mean (1 - p)),
    from log-sigmoids, so that no member's certainty overflows."""
    return torch.logsumexp(F.logsigmoid(members), 0) - torch.logsumexp(F.logsigmoid(-members), 0)


def masked_mean(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, H) mean of (B, T, H) states over the positions where (B, T) `mask` is true (0 where none is)."""
    counts = mask.sum(1, keepdim=True).clamp(min=1)  # integers: exact in any dtype of h
    return (h * mask.unsqueeze(-1).to(h.dtype)).sum(1) / counts
