"""A recurrent word encoder, and the two models built on it for problem 4 (lm_sentiment): a language model and a
review classifier. Both hold the encoder as `self.encoder`, so a classifier stage takes the language model's
encoder with `init: {checkpoint: previous, include: ['^model\\.encoder\\.']}`.

- `TextEncoder`: embedding (id 0 pads) + `layers` LSTM or GRU layers, left to right, with dropout on the
  embeddings (whole words, as AWD-LSTM's embedding dropout), between layers and on the output.
- `RNNLanguageModel`: next-token logits from every position (`output=all`: truncated back-propagation through a
  chunk) or from the last one (`output=last`: a window of previous tokens predicts the next, the original's
  stage 1: embedding 100, LSTM 1000, softmax over 10k words). With `decoder=false` it returns the hidden states
  (`{"hidden": (B, T, H)}`) and the head owns the output layer (an adaptive softmax, heads/adaptive_lm.py).
- `RNNClassifier`: the encoder reads a review (right-padded), its states are pooled (`last`: the state at the
  last token, as the original's Keras LSTM returned; `concat`: last, max and mean over the tokens, ULMFiT's concat
  pooling, Howard & Ruder 2018), then Dense `hidden_units` with ReLU, dropout, and one logit (the original:
  Dense 10, ReLU, dropout 0.5, sigmoid).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

PAD = 0


class TextEncoder(nn.Module):
    def __init__(self, vocab_size: int, embedding_dim: int = 100, hidden: int = 1000, layers: int = 1,
                 cell: str = "lstm", embed_dropout: float = 0.0, dropout: float = 0.0, output_dropout: float = 0.0):
        super().__init__()
        if cell not in ("lstm", "gru"):
            raise ValueError(f"cell={cell} is not lstm or gru")
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=PAD)
        rnn = nn.LSTM if cell == "lstm" else nn.GRU
        self.rnn = rnn(embedding_dim, hidden, layers, batch_first=True, dropout=dropout if layers > 1 else 0.0)
        self.embed_dropout, self.output_dropout = embed_dropout, nn.Dropout(output_dropout)
        self.input_dropout = nn.Dropout(dropout)
        self.hidden = hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.embedding.weight
        if self.training and self.embed_dropout > 0:
            # drop whole words: a row of the table is zeroed for the batch, the rest rescaled
            keep = torch.empty(weight.shape[0], 1, device=weight.device).bernoulli_(1 - self.embed_dropout)
            weight = weight * keep / (1 - self.embed_dropout)
        e = nn.functional.embedding(x, weight, padding_idx=PAD)
        h, _ = self.rnn(self.input_dropout(e))
        return self.output_dropout(h)


class RNNLanguageModel(nn.Module):
    def __init__(self, vocab_size: int, embedding_dim: int = 100, hidden: int = 1000, layers: int = 1,
                 cell: str = "lstm", output: str = "all", decoder: bool = True, embed_dropout: float = 0.0,
                 dropout: float = 0.0, output_dropout: float = 0.0):
        super().__init__()
        if output not in ("all", "last"):
            raise ValueError(f"output={output} is not all or last")
        self.encoder = TextEncoder(vocab_size, embedding_dim, hidden, layers, cell, embed_dropout, dropout,
                                   output_dropout)
        self.output = output
        self.decoder = nn.Linear(hidden, vocab_size) if decoder else None

    def forward(self, x: torch.Tensor) -> Any:
        h = self.encoder(x)
        if self.output == "last":  # windows are left-padded: the last position is the window's last token
            h = h[:, -1]
        return self.decoder(h) if self.decoder is not None else {"hidden": h}


class RNNClassifier(nn.Module):
    def __init__(self, vocab_size: int, embedding_dim: int = 100, hidden: int = 1000, layers: int = 1,
                 cell: str = "lstm", pooling: str = "last", hidden_units: int = 10, dropout: float = 0.5,
                 embed_dropout: float = 0.0, rnn_dropout: float = 0.0, output_dropout: float = 0.0):
        super().__init__()
        if pooling not in ("last", "concat"):
            raise ValueError(f"pooling={pooling} is not last or concat")
        self.encoder = TextEncoder(vocab_size, embedding_dim, hidden, layers, cell, embed_dropout, rnn_dropout,
                                   output_dropout)
        self.pooling = pooling
        features = hidden * (3 if pooling == "concat" else 1)
        layers_: list[nn.Module] = []
        if hidden_units:
            layers_ += [nn.Linear(features, hidden_units), nn.ReLU()]
            features = hidden_units
        layers_ += [nn.Dropout(dropout), nn.Linear(features, 1)]
        self.classifier = nn.Sequential(*layers_)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(x)
        mask = (x != PAD).unsqueeze(-1)
        lengths = mask.sum(1)  # (B, 1)
        # the state after the last token; a review with no token (every word outside the vocabulary) has position 0
        last = h.gather(1, (lengths - 1).clamp(min=0).unsqueeze(-1).expand(-1, 1, h.shape[-1])).squeeze(1)
        if self.pooling == "last":
            return last
        mean = (h * mask).sum(1) / lengths.clamp(min=1)
        big = torch.finfo(h.dtype).max
        top = h.masked_fill(~mask, -big).amax(1)
        top = torch.where(lengths > 0, top, torch.zeros_like(top))
        return torch.cat([last, top, mean], -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(x)).squeeze(-1)
