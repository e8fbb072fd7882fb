"""Character language model of problem 1 (aspect sentiment): the previous 7 characters predict the next.

Embedding (64) -> GRU (64) -> linear over the vocabulary, as in docs/problems.md: its only purpose is to pretrain the
character embedding (`embedding.weight`) that the tagger then takes over, frozen (stage `init.include`). Input is
(B, window) ids, left-padded with 0 at a document's start; output is (B, V) logits for `NextTokenHead`.
"""
from __future__ import annotations

import torch
from torch import nn


class CharLM(nn.Module):
    def __init__(self, vocab_size: int, embedding_dim: int = 64, hidden: int = 64, dropout: float = 0.0):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=0)
        self.gru = nn.GRU(embedding_dim, hidden, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, vocab_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, h = self.gru(self.embedding(x))
        return self.out(self.dropout(h[-1]))
