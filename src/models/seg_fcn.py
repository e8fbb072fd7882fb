"""The faithful segmenter of problem 3: a small fully convolutional s/b/m/e tagger (Su Jianlin, 2017, kexue.fm
"基于全卷积网络的中文分词"; docs/problems.md).

Character embedding of 128, dropout 0.5, then 1-D convolutions of kernel 3 with 128, 32 and 4 output channels,
ReLU between them, "same" padding and no pooling: one score per tag and character.

Clauses of different lengths share a padded batch here, so activations at padded positions are zeroed after every
layer: each clause is then computed exactly as if it were alone with "same" zero padding, and a prediction never
depends on what else is in the batch.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class SegFCN(nn.Module):
    def __init__(self, vocab_size: int, num_tags: int = 4, embedding_dim: int = 128, dropout: float = 0.5,
                 channels: Sequence[int] = (128, 32), kernel_size: int = 3):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=0)
        self.dropout = nn.Dropout(dropout)
        widths = [embedding_dim, *channels, num_tags]
        self.convs = nn.ModuleList(
            nn.Conv1d(cin, cout, kernel_size, padding=kernel_size // 2) for cin, cout in zip(widths, widths[1:])
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Character ids (B, T), 0 = padding -> tag scores (B, T, num_tags). Bigram ids that the data may add as
        x[..., 1:] of a (B, T, 3) input are not used: the original has characters only."""
        if x.ndim == 3:
            x = x[..., 0]
        mask = (x != 0).unsqueeze(1).to(self.embedding.weight.dtype)  # (B, 1, T)
        h = self.dropout(self.embedding(x)).transpose(1, 2)
        for conv in self.convs[:-1]:
            h = torch.relu(conv(h)) * mask
        return self.convs[-1](h).transpose(1, 2)
