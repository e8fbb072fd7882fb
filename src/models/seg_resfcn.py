"""Our segmenter: a deeper, gated, residual fully convolutional s/b/m/e tagger, with n-gram embeddings and a CRF.

- Input: each character's embedding, concatenated with the embeddings of the character bigram that ends at it and
  of the one that starts at it. The data supplies the bigram ids from its bigram vocabulary (bigrams seen at least
  twice in training; the rest share one "unknown" row), as x[..., 1:] of a (B, T, 3) input. Character bigrams are
  the strongest single feature for Chinese segmentation (Pei, Ge & Chang, 2014; Chen et al., 2015); as a lookup
  they cost no multiply-adds, which matters on a CPU.
- Body: gated residual convolution blocks as in the gated CNN segmenter of Wang & Xu (2017, "Convolutional Neural
  Network with Word Embeddings for Chinese Word Segmentation") and ConvS2S (Gehring et al., 2017): a kernel-3
  convolution to 2C channels, a GLU, dropout, and a residual connection scaled by sqrt(1/2). Dilations widen the
  receptive field (Strubell et al., 2017, "Fast and Accurate Entity Recognition with Iterated Dilated
  Convolutions"). No pooling: one output per character.
- Character classes and the word list (optional, when the data supplies them as more columns of x): an embedding
  of each character's type (han, digit, Chinese numeral, Latin letter, punctuation, symbol; `num_char_types`), so
  that a character rare enough to share the unknown id still says what kind it is, and embeddings of the three
  word-list features of `trainer.datasets.cws_lexicon` (`word_feature_size` values each): the longest training-list
  word starting at, ending at and running through the character, as closed-track systems use the word list.
- Output: per-character tag scores and, with `crf`, learned transition, start and end scores; the head then trains
  a linear-chain CRF and decodes with them (plus the s/b/m/e constraints).

Padded positions are zeroed after every layer, so that a clause is computed as if alone in its batch.
"""
from __future__ import annotations

import math
from typing import Annotated, Any, Sequence

import torch
import torch.nn.functional as F
from annotated_types import Ge
from torch import nn

from trainer.errors import UserError


class GatedBlock(nn.Module):
    def __init__(self, channels: int, kernel_size: int, dilation: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.conv = nn.Conv1d(channels, 2 * channels, kernel_size, padding=dilation * (kernel_size // 2),
                              dilation=dilation)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return (h + F.glu(self.conv(self.dropout(h)), dim=1) * mask) * math.sqrt(0.5)


class SegResFCN(nn.Module):
    def __init__(self, vocab_size: int, num_tags: int = 4, embedding_dim: int = 128, bigram_vocab_size: int = 0,
                 bigram_dim: int = 64, channels: int = 256, kernel_size: int = 3,
                 dilations: Sequence[int] = (1, 2, 1, 2), dropout: float = 0.2, embedding_dropout: float = 0.1,
                 crf: bool = True, num_char_types: Annotated[int, Ge(0)] = 0, type_dim: Annotated[int, Ge(1)] = 16,
                 word_feature_size: Annotated[int, Ge(0)] = 0, word_feature_dim: Annotated[int, Ge(1)] = 16):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=0)
        self.bigram_vocab_size = bigram_vocab_size
        self.num_char_types, self.word_feature_size = num_char_types, word_feature_size
        width = embedding_dim
        if bigram_vocab_size:
            self.bigrams = nn.Embedding(bigram_vocab_size, bigram_dim, padding_idx=0)
            width += 2 * bigram_dim
        if num_char_types:
            self.types = nn.Embedding(num_char_types, type_dim, padding_idx=0)
            width += type_dim
        if word_feature_size:
            # one table per feature (starting at, ending at, running through): a length means another thing in each
            self.word_features = nn.ModuleList(nn.Embedding(word_feature_size, word_feature_dim) for _ in range(3))
            width += 3 * word_feature_dim
        self.columns = 1 + 2 * bool(bigram_vocab_size) + bool(num_char_types) + 3 * bool(word_feature_size)
        self.embedding_dropout = nn.Dropout(embedding_dropout)
        self.project = nn.Conv1d(width, channels, 1)
        self.blocks = nn.ModuleList(GatedBlock(channels, kernel_size, d, dropout) for d in dilations)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Conv1d(channels, num_tags, 1)
        if crf:
            self.transitions = nn.Parameter(torch.zeros(num_tags, num_tags))
            self.start = nn.Parameter(torch.zeros(num_tags))
            self.end = nn.Parameter(torch.zeros(num_tags))
        self.crf = crf

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, Any]:
        """Character ids (B, T), or (B, T, C) with more columns: the ids of each character's left and right bigrams,
        its type, its three word-list features (each only when the model has that input); 0 = padding -> tag scores
        (B, T, num_tags), or a dict with CRF scores."""
        chars = x[..., 0] if x.ndim == 3 else x
        mask = (chars != 0).unsqueeze(1).to(self.embedding.weight.dtype)  # (B, 1, T)
        parts = [self.embedding(chars)]
        given = x.shape[-1] if x.ndim == 3 else 1
        if given != self.columns:
            if self.bigram_vocab_size and given == 1:
                raise UserError("model.bigram_vocab_size > 0 needs bigram ids in the input: set dataset.bigram_min_count")
            raise UserError(f"the model reads {self.columns} input columns per character (char, bigrams, type, "
                            f"word features as configured) but the data gives {given}: the dataset's bigram_min_count, "
                            f"char_types and word_features must match the model's")
        at = 1
        if self.bigram_vocab_size:
            parts.append(self.bigrams(x[..., 1:3]).flatten(2))
            at = 3
        if self.num_char_types:
            parts.append(self.types(x[..., at]))
            at += 1
        if self.word_feature_size:
            parts.extend(table(x[..., at + k]) for k, table in enumerate(self.word_features))
        h = self.embedding_dropout(torch.cat(parts, -1)).transpose(1, 2) * mask
        h = self.project(h) * mask
        for block in self.blocks:
            h = block(h, mask)
        emissions = self.out(self.dropout(h)).transpose(1, 2)
        if not self.crf:
            return emissions
        return {"emissions": emissions, "transitions": self.transitions, "start": self.start, "end": self.end}
