"""The character tagger of problem 1 (aspect sentiment): embedding -> stacked bidirectional GRUs -> tag scores.

Faithful to docs/problems.md with the defaults: a 64-d character embedding (taken over from the character LM and frozen
by the task's stage options), BiGRU(64) with its two directions summed, BiGRU(32) summed, and a per-character
linear layer to 5 outputs (the 4 tags and the original's padding class, which the head never decodes). Options for
our variant: other widths, `merge: concat`, dropout, and `crf: true`, which adds learned transition, start and end
scores (the head then trains a linear-chain CRF and decodes with them), and `span_classifier: true`, a polarity
classifier per View (`trainer.models.span_polarity.SpanPolarity`: `span_hidden`, `span_context`,
`span_attention`, `span_dropout`) over every BiGRU layer's outputs, concatenated (with `span_embedding: true`, the
character embedding as well, so that it sees the characters themselves, 好 or 差; with `span_ngrams: B`, a bag of
hashed character 1- to 3-grams in B buckets of `span_ngram_dim` (`HashedCharNgrams`); with `span_states: false`, not
the BiGRU layers, so that it is a classifier of its own beside the tagger; with `span_inside: false`, only the
context), or with `span_linear: true` a linear model over the TF-IDF-style bag of hashed character n-grams around
the View, `span_context` characters each side, in `span_ngrams` buckets (`trainer.models.context_polarity`, the
problem's context baseline inside the model); it is part of the model so that its
weights and settings travel with the checkpoint, and the head calls it on the spans it decodes.

Outputs: the (W, T, num_outputs) scores alone, or a dict with them as "emissions", plus "transitions", "start",
"end" (crf) and/or "states" (W, T, D) and "span", the classifier itself (span_classifier).

Sequences are right-padded with id 0 and packed, so that the backward direction starts at each window's last real
character, not in the padding.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from trainer.errors import UserError

from .context_polarity import ContextNgramPolarity
from .span_polarity import HashedCharNgrams, SpanPolarity


class BiGRUTagger(nn.Module):
    def __init__(self, vocab_size: int, num_outputs: int = 5, embedding_dim: int = 64,
                 hidden: Sequence[int] = (64, 32), merge: str = "sum", dropout: float = 0.0,
                 embedding_dropout: float = 0.0, crf: bool = False, num_tags: int = 4, match_flags: int = 0,
                 match_dim: int = 8, span_classifier: bool = False, span_hidden: int = 64, span_context: int = 10,
                 span_attention: bool = True, span_dropout: float = 0.1, span_embedding: bool = False,
                 span_states: bool = True, span_ngrams: int = 0, span_ngram_dim: int = 32, span_inside: bool = True,
                 span_linear: bool = False):
        super().__init__()
        if merge not in ("sum", "concat"):
            raise UserError(f"model.merge={merge}: must be sum (directions added) or concat")
        if num_outputs < num_tags:
            raise UserError(f"model.num_outputs={num_outputs}: needs at least the {num_tags} tags")
        self.merge = merge
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=0)
        self.embedding_dropout = nn.Dropout(embedding_dropout)
        layers, width = [], embedding_dim
        if match_flags:  # x[..., 1]: where the entity list matches (see trainer.datasets.absa)
            self.match_embedding = nn.Embedding(match_flags, match_dim, padding_idx=0)
            width += match_dim
        self.match_flags = match_flags
        for h in hidden:
            layers.append(nn.GRU(width, h, batch_first=True, bidirectional=True))
            width = h if merge == "sum" else 2 * h
        self.grus = nn.ModuleList(layers)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(width, num_outputs)
        self.span, self.ngrams = None, None
        if span_classifier and span_linear:  # it reads the characters, not the tagger's states
            if span_ngrams < 1:
                raise UserError("model.span_linear needs model.span_ngrams > 0, its number of n-gram buckets")
            self.span = ContextNgramPolarity(span_ngrams, span_context)
        elif span_classifier:  # every layer's outputs, not only the last: the first is closer to the characters
            states = ((sum(h if merge == "sum" else 2 * h for h in hidden) if span_states else 0)
                      + (embedding_dim if span_embedding else 0) + (span_ngram_dim if span_ngrams else 0))
            if not states:
                raise UserError("model.span_classifier reads nothing: set span_states, span_embedding or span_ngrams")
            self.span = SpanPolarity(states, span_hidden, span_context, span_attention, span_dropout, span_inside)
            if span_ngrams:
                self.ngrams = HashedCharNgrams(span_ngrams, span_ngram_dim)
        if crf:
            self.transitions = nn.Parameter(torch.zeros(num_tags, num_tags))
            self.start = nn.Parameter(torch.zeros(num_tags))
            self.end = nn.Parameter(torch.zeros(num_tags))
        self.crf, self.num_tags, self.span_embedding, self.span_states = crf, num_tags, span_embedding, span_states

    def forward(self, x: torch.Tensor) -> Any:
        flags = None
        if x.dim() == 3:
            x, flags = x[..., 0], x[..., 1]
        lengths = (x != 0).sum(1).clamp(min=1).cpu()
        h = self.embedding_dropout(self.embedding(x))
        span_inputs = [h] if self.span_embedding else []
        if self.match_flags:
            if flags is None:
                raise UserError("model.match_flags is set but the data carries no match flags "
                                "(dataset.match_feature=true)")
            h = torch.cat([h, self.match_embedding(flags)], -1)
        for gru in self.grus:
            packed = pack_padded_sequence(h, lengths, batch_first=True, enforce_sorted=False)
            out, _ = gru(packed)
            out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
            if self.merge == "sum":
                half = out.shape[-1] // 2
                out = out[..., :half] + out[..., half:]
            h = self.dropout(out)
            if self.span_states:
                span_inputs.append(h)
        scores = self.out(h)
        if not (self.crf or self.span is not None):
            return scores
        outputs = {"emissions": scores}
        if self.crf:
            outputs.update(transitions=self.transitions, start=self.start, end=self.end)
        if isinstance(self.span, ContextNgramPolarity):
            outputs.update(states=x[..., None].float(), span=self.span)
        elif self.span is not None:
            if self.ngrams is not None:
                span_inputs.append(self.ngrams(x))
            outputs.update(states=torch.cat(span_inputs, -1), span=self.span)
        return outputs
