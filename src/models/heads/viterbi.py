"""Batched Viterbi decoding and the linear-chain CRF likelihood, over tag sets with forbidden transitions.

Scores are in log space: emissions (B, T, K) per position and tag, transitions (K, K) from tag i to tag j, start
and end scores (K,). A forbidden transition, start or end gets `FORBIDDEN`: finite, so that sums never turn into
NaN, and far below any score a model or a dictionary bonus produces. Sequences are padded at the end; `lengths`
says where each stops (every length >= 1). The loop runs over time steps, vectorised over the batch and tags.

The CRF (Lafferty, McCallum & Pereira, 2001) uses the same scores: its negative log-likelihood is the log-partition
(forward algorithm) minus the gold path's score.
"""
from __future__ import annotations

from typing import Iterable

import torch

FORBIDDEN = -1e4


def transition_mask(tags: str, allowed: Iterable[str]) -> torch.Tensor:
    """(K, K) scores: 0 where the pair "ij" (tag i then tag j, one character per tag) is allowed, else FORBIDDEN."""
    k = len(tags)
    out = torch.full((k, k), FORBIDDEN)
    for pair in allowed:
        out[tags.index(pair[0]), tags.index(pair[1])] = 0.0
    return out


def tag_mask(tags: str, allowed: str) -> torch.Tensor:
    """(K,) scores: 0 for the tags in `allowed`, else FORBIDDEN (allowed first or last tags)."""
    return torch.tensor([0.0 if t in allowed else FORBIDDEN for t in tags])


def _active(lengths: torch.Tensor, t: int) -> torch.Tensor:
    return (lengths > t)[:, None]


def viterbi(emissions: torch.Tensor, lengths: torch.Tensor, transitions: torch.Tensor, start: torch.Tensor,
            end: torch.Tensor) -> torch.Tensor:
    """The best tag path of each sequence: (B, T) tag ids (positions past a sequence's length are filler)."""
    b, t_max, k = emissions.shape
    emissions = emissions.float()
    transitions, start, end = transitions.float(), start.float(), end.float()
    if b == 0 or t_max == 0:
        return torch.zeros((b, t_max), dtype=torch.long, device=emissions.device)
    score = start + emissions[:, 0]
    stay = torch.arange(k, device=emissions.device).expand(b, k)
    pointers = []
    for t in range(1, t_max):
        best, arg = (score[:, :, None] + transitions).max(dim=1)  # best previous tag for each tag
        active = _active(lengths, t)
        score = torch.where(active, best + emissions[:, t], score)
        pointers.append(torch.where(active, arg, stay))  # past the end: carry the final tag back unchanged
    last = (score + end).argmax(dim=-1)
    path = [last]
    for arg in reversed(pointers):
        last = arg.gather(1, last[:, None])[:, 0]
        path.append(last)
    return torch.stack(path[::-1], dim=1)


def crf_nll(emissions: torch.Tensor, tags: torch.Tensor, lengths: torch.Tensor, transitions: torch.Tensor,
            start: torch.Tensor, end: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """Negative log-likelihood of the gold paths `tags` (B, T; anything past the length), summed over the batch
    (`reduction="none"`: one per sequence, (B,))."""
    b, t_max, k = emissions.shape
    emissions = emissions.float()
    tags = tags.clamp(min=0)
    rows = torch.arange(b, device=emissions.device)
    # the gold path's score
    gold = start[tags[:, 0]] + emissions[rows, 0, tags[:, 0]]
    # the log-partition (forward algorithm)
    alpha = start + emissions[:, 0]
    for t in range(1, t_max):
        active = _active(lengths, t)
        step = transitions[tags[:, t - 1], tags[:, t]] + emissions[rows, t, tags[:, t]]
        gold = gold + torch.where(active[:, 0], step, torch.zeros_like(step))
        nxt = torch.logsumexp(alpha[:, :, None] + transitions, dim=1) + emissions[:, t]
        alpha = torch.where(active, nxt, alpha)
    last = tags.gather(1, (lengths - 1).clamp(min=0)[:, None])[:, 0]
    gold = gold + end[last]
    nll = torch.logsumexp(alpha + end, dim=-1) - gold
    return nll if reduction == "none" else nll.sum()
