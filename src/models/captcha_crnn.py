"""Our captcha model: a small CRNN encoder with one learned attention query per letter position.

The encoder follows CRNN (Shi, Bai & Yao, 2015, "An End-to-End Trainable Neural Network for Image-based Sequence
Recognition"): conv/BN/ReLU stages that keep the width resolution, a max over the remaining height, and a
bidirectional GRU over the image columns. Instead of CTC, each of the L positions has a learned query that attends
over the columns (as attention OCR decoders do, without their recurrence), so the output is one softmax per
position, scored by the same head as the faithful CNN. Widths are chosen for CPU speed: ~350 images/s of training
on 2 cores at 36x96 input.
"""
from __future__ import annotations

import math

import torch
from torch import nn


def conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class CaptchaCRNN(nn.Module):
    def __init__(self, length: int = 4, num_classes: int = 26, in_channels: int = 1,
                 widths: tuple[int, int, int, int] = (24, 48, 64, 96), rnn_hidden: int = 128, dropout: float = 0.1):
        super().__init__()
        w1, w2, w3, w4 = widths
        self.features = nn.Sequential(
            *conv_bn_relu(in_channels, w1), nn.MaxPool2d(2),
            *conv_bn_relu(w1, w2), nn.MaxPool2d(2),
            *conv_bn_relu(w2, w3), *conv_bn_relu(w3, w3), nn.MaxPool2d((2, 1)),  # halve height only
            *conv_bn_relu(w3, w4),
        )
        self.rnn = nn.GRU(w4, rnn_hidden, batch_first=True, bidirectional=True)
        d = 2 * rnn_hidden
        self.queries = nn.Parameter(torch.randn(length, d) / math.sqrt(d))
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(d, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> logits (B, length, num_classes)."""
        h = self.features(x.contiguous(memory_format=torch.channels_last))
        seq, _ = self.rnn(h.amax(dim=2).transpose(1, 2))  # (B, W', d): one step per column
        scores = torch.einsum("btd,pd->bpt", seq, self.queries) / math.sqrt(seq.shape[-1])
        pooled = torch.einsum("bpt,btd->bpd", scores.softmax(-1), seq)
        return self.classifier(self.dropout(pooled))
