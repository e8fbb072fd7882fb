"""Head for entity-level sentiment as character tagging (problem 1 of docs/problems.md, CCF BDCI 2016).

Tags: 0 = not an entity, 1/2/3 = inside a positive/neutral/negative entity. The model may output more scores than
tags (the original's fifth, padding class): only the first `num_tags` are decoded.

- Loss: per-character cross-entropy, averaged over each window's characters; each window is weighted
  `neutral_weight / (neutral_weight + its number of neutral characters)` (3/(3+n) in the original, which keeps the
  many neutral mentions from drowning the polar ones; null: unweighted). A model that returns learned transitions
  (a dict with "emissions", "transitions", "start", "end") is trained as a linear-chain CRF instead.
- Decoding, on whole sentences (the windows' scores stitched back, see `trainer.datasets.absa`):
  1. Viterbi over the allowed transitions 0->0,1,2,3; 1->0,1; 2->0,2; 3->0,3 (`viterbi.py`), on log-softmax scores;
  2. a second pass forced towards the entity list: inside each of its matches (found by the DataModule with
     Aho-Corasick, longest first) `entity_bonus` is added to the entity tags, and `boundary_bonus` to tag 0 on the
     character just before and just after; the entities are the runs of non-zero tags of this pass (with
     `split_at_matches`, a run that the matches cover end to end is cut at the matches: two Views written back to
     back, 宝马奔驰; off by default: on validation the gold joins such names, 凯越别克, more often than it splits them);
  3. each entity's polarity is the majority of the first pass's non-zero tags inside it (ties, and entities the
     first pass did not see, go to the polarity with the highest summed probability over the span).
  `tag_bias` (one number per tag, added to the scores before decoding; 0 by default) moves the decisions a model's
  training left, e.g. towards the neutral polarity that most entities have.
  A View found several times in a sentence gets the majority of its mentions' polarities.
- Metrics (`absa_score`): the contest's F1 over (sentence, View, polarity), entity P/R/F1, polarity accuracy on
  the Views found, recall of Views unseen in training; count sums on the device, one all-reduce.
- Self-training: `pseudo_label` gives each sentence's decoded spans and, as its confidence, the lowest probability
  that any of its characters gives its most likely tag.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from trainer.datasets.absa_formats import POLARITIES

from .absa_score import COUNTS, scores, sentence_counts
from .base import Head
from .viterbi import crf_nll, tag_mask, transition_mask, viterbi

TAGS = "0123"
ALLOWED = ("00", "01", "02", "03", "10", "11", "20", "22", "30", "33")
IGNORE = -100
NEUTRAL = 2

Span = tuple[int, int, int]  # start, end (exclusive), tag 1..3


class EntityPolarityTagger(Head):
    monitor, monitor_mode = "f1", "max"

    def __init__(self, num_tags: int = 4, neutral_weight: float | None = 3.0, entity_pass: bool = True,
                 entity_bonus: float = 10.0, boundary_bonus: float = 2.0, split_at_matches: bool = False,
                 tag_bias: Sequence[float] | None = None):
        super().__init__()
        if num_tags != len(TAGS):
            raise ValueError(f"num_tags={num_tags}: this head decodes the {len(TAGS)} tags none/pos/neu/neg")
        self.num_tags, self.neutral_weight = num_tags, neutral_weight
        self.entity_pass, self.entity_bonus, self.boundary_bonus = entity_pass, entity_bonus, boundary_bonus
        self.split_at_matches = split_at_matches
        # constraints, not learned: rebuilt from code, not saved in checkpoints
        self.register_buffer("allowed", transition_mask(TAGS, ALLOWED), persistent=False)
        self.register_buffer("free", tag_mask(TAGS, TAGS), persistent=False)
        bias = torch.zeros(len(TAGS)) if tag_bias is None else torch.tensor([float(b) for b in tag_bias])
        if bias.shape != (len(TAGS),):
            raise ValueError(f"tag_bias={tag_bias}: one number per tag (none, pos, neu, neg)")
        self.register_buffer("tag_bias", bias, persistent=False)

    # --- scores -------------------------------------------------------------------------------------------------
    def _emissions(self, outputs: Any) -> tuple[torch.Tensor, bool]:
        """(W, T, C) scores of the windows, and whether they come with CRF transitions."""
        if isinstance(outputs, dict):
            return outputs["emissions"].float(), True
        return outputs.float(), False

    def _window_nll(self, outputs: Any, batch: dict[str, Any]) -> torch.Tensor:
        """(W,) negative log-likelihood of each window, summed over its characters."""
        em, crf = self._emissions(outputs)
        y = batch["y"]
        if crf:
            return crf_nll(em[..., : self.num_tags], y, batch["lengths"], outputs["transitions"].float(),
                           outputs["start"].float(), outputs["end"].float(), reduction="none")
        return F.cross_entropy(em.transpose(1, 2), y, ignore_index=IGNORE, reduction="none").sum(1)

    def loss(self, outputs: Any, batch: dict[str, Any]) -> torch.Tensor:
        y = batch["y"]
        per_char = self._window_nll(outputs, batch) / (y != IGNORE).sum(1).clamp(min=1)
        if self.neutral_weight is None:
            return per_char.mean()
        weights = self.neutral_weight / (self.neutral_weight + (y == NEUTRAL).sum(1).float())
        return (weights * per_char).mean()

    def sentence_scores(self, outputs: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(S, L, 4) tag scores of whole sentences stitched from their windows, the transition scores to decode
        them with, and (S, L, 4) tag probabilities."""
        em, crf = self._emissions(outputs)
        if crf:
            scores_, trans = em[..., : self.num_tags], outputs["transitions"].float() + self.allowed
        else:
            scores_, trans = em.log_softmax(-1)[..., : self.num_tags], self.allowed
        stitched = scores_.reshape(-1, self.num_tags)[batch["stitch"]] + self.tag_bias
        return stitched, trans, stitched.softmax(-1)

    # --- decoding -----------------------------------------------------------------------------------------------
    def _bonus(self, batch: dict[str, Any], shape: torch.Size, device: torch.device) -> torch.Tensor:
        bonus = np.zeros(tuple(shape), dtype=np.float32)
        for s, (matches, n) in enumerate(zip(batch["matches"], batch["sentence_lengths"].tolist())):
            for a, b in matches:
                bonus[s, a:b, 1:] += self.entity_bonus
                if a > 0:
                    bonus[s, a - 1, 0] += self.boundary_bonus
                if b < n:
                    bonus[s, b, 0] += self.boundary_bonus
        return torch.from_numpy(bonus).to(device)

    def tag_paths(self, outputs: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(S, L) tags of the first pass and of the entity-list pass (the first again without one), and the
        (S, L, 4) tag probabilities."""
        scores_, trans, probs = self.sentence_scores(outputs, batch)
        lengths = batch["sentence_lengths"]
        if isinstance(outputs, dict):
            start, end = outputs["start"].float() + self.free, outputs["end"].float() + self.free
        else:
            start = end = self.free
        first = viterbi(scores_, lengths, trans, start, end)
        if not (self.entity_pass and any(batch.get("matches") or [])):
            return first, first, probs
        bonus = self._bonus(batch, scores_.shape, scores_.device)
        return first, viterbi(scores_ + bonus, lengths, trans, start, end), probs

    def decode_spans(self, outputs: Any, batch: dict[str, Any]) -> tuple[list[list[Span]], torch.Tensor]:
        """The entity spans of each sentence of the batch, and the (S, L, 4) tag probabilities."""
        first, second, probs = self.tag_paths(outputs, batch)
        lengths = batch["sentence_lengths"]
        matches = batch.get("matches") or [[] for _ in range(len(lengths))]
        use_list = self.entity_pass and self.split_at_matches
        first_np, second_np = first.cpu().numpy(), second.cpu().numpy()
        probs_np = probs.detach().cpu().numpy()
        out = []
        for s, n in enumerate(lengths.tolist()):
            spans = []
            for a, b in _tiled(_runs(second_np[s, :n]), matches[s] if use_list else []):
                spans.append((a, b, _majority(first_np[s, a:b], probs_np[s, a:b])))
            out.append(spans)
        return out, probs

    def decode(self, outputs: Any, batch: dict[str, Any]) -> list[list[tuple[str, str]]]:
        """The (View, polarity) pairs of each sentence, in order of first mention."""
        spans, _ = self.decode_spans(outputs, batch)
        return [pairs_of(text, s) for text, s in zip(batch["texts"], spans)]

    def pseudo_label(self, outputs: Any, batch: dict[str, Any]) -> tuple[list[list[Span]], torch.Tensor]:
        """Each sentence's decoded spans, and its confidence: the lowest top-tag probability of its characters."""
        spans, probs = self.decode_spans(outputs, batch)
        lengths = batch["sentence_lengths"].to(probs.device)
        top = probs.max(-1).values
        inside = torch.arange(top.shape[1], device=top.device)[None, :] < lengths[:, None]
        confidence = torch.where(inside, top, torch.ones_like(top)).min(1).values
        return [[list(span) for span in s] for s in spans], confidence

    # --- metrics ------------------------------------------------------------------------------------------------
    def update(self, outputs: Any, batch: dict[str, Any]) -> None:
        device = batch["stitch"].device
        if "y" in batch:
            self.accumulate("nll_sum", self._window_nll(outputs, batch).sum().double())
            self.accumulate("chars", (batch["y"] != IGNORE).sum().double())
        counts = np.zeros(len(COUNTS), dtype=np.int64)
        for gold, unseen, pred in zip(batch["gold"], batch["gold_unseen"], self.decode(outputs, batch)):
            counts += sentence_counts(gold, pred, unseen)
        self.accumulate("score", torch.from_numpy(counts).to(device=device, dtype=torch.float64))

    def compute(self) -> dict[str, float]:
        s = self.sums()
        if not s:
            return {}
        metrics = {"loss": float(s["nll_sum"] / s["chars"].clamp(min=1))} if "nll_sum" in s else {}
        metrics.update(scores(s["score"].tolist()))
        return metrics


def _runs(path: np.ndarray) -> list[tuple[int, int]]:
    """(start, end) of each maximal run of non-zero tags."""
    nonzero = np.concatenate([[False], path != 0, [False]])
    edges = np.flatnonzero(nonzero[1:] != nonzero[:-1])
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


def _tiled(runs: list[tuple[int, int]], matches: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Each run, or the entity-list matches inside it when they cover it exactly end to end."""
    out = []
    for a, b in runs:
        inside = [(ma, mb) for ma, mb in matches if a <= ma and mb <= b]
        if len(inside) > 1 and inside[0][0] == a and inside[-1][1] == b and \
                all(p[1] == q[0] for p, q in zip(inside, inside[1:])):
            out.extend(inside)
        else:
            out.append((a, b))
    return out


def _majority(first: np.ndarray, probs: np.ndarray) -> int:
    """The most frequent non-zero tag of the first pass; ties and no votes by the summed tag probabilities."""
    votes = np.bincount(first, minlength=4)[1:4]
    mass = probs[:, 1:4].sum(0)
    if votes.max() == 0:
        return int(mass.argmax()) + 1
    tied = np.flatnonzero(votes == votes.max())
    return int(tied[mass[tied].argmax()]) + 1


def pairs_of(text: str, spans: list[Span]) -> list[tuple[str, str]]:
    """(View, polarity) per distinct View string; a View with several mentions takes their majority polarity
    (ties: the first mention's)."""
    votes: dict[str, list[int]] = {}
    for a, b, tag in spans:
        votes.setdefault(text[a:b], []).append(tag)
    out = []
    for view, tags in votes.items():
        counts = np.bincount(tags, minlength=4)
        best = tags[0] if counts[tags[0]] == counts.max() else int(counts.argmax())
        out.append((view, POLARITIES[best - 1]))
    return out
