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
  3. each entity's polarity (`polarity`):
     - `tags`: the majority of the first pass's non-zero tags inside it (ties, and entities the first pass did not
       see, go to the polarity with the highest summed probability over the span);
     - `auto` (the default): where the model has a span classifier (`model.span_classifier`, see
       `trainer.models.span_polarity`), its decision from the model's states in and around the span; the majority
       of the tags otherwise. The classifier is trained here, beside the tagging loss, on the gold Views of each
       window alone (`span_weight` times its cross-entropy, `span_class_weight` per polarity; `span_detach: true`
       keeps its gradient out of the tagger), so that the many neutral characters no longer drown what is said
       about a View. With `neutral_bias_grid`, the bias added to its neutral score is chosen on `tune_split`
       (validation: the grid value of the best triple F1, ties to the first) and written into the classifier's
       saved `neutral_bias`; every other split is scored with the saved one.
  `tag_bias` (one number per tag, added to the scores before decoding; 0 by default) moves the decisions a model's
  training left, e.g. towards the neutral polarity that most entities have.
  A View found several times in a sentence gets the majority of its mentions' polarities.
- Metrics (`absa_score`): the contest's F1 over (sentence, View, polarity), entity P/R/F1, polarity accuracy on
  the Views found, recall of Views unseen in training; with the span classifier also `span_acc`, its accuracy on
  the gold Views (their spans as tagged), and the `neutral_bias` used; count sums on the device, one all-reduce.
- Self-training: `pseudo_label` gives each sentence's decoded spans and, as its confidence, the lowest probability
  that any of its characters gives its most likely tag.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from trainer.datasets.absa_formats import POLARITIES
from trainer.models.span_polarity import PolarityDecider, gold_spans

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
                 tag_bias: Sequence[float] | None = None, polarity: str = "auto", span_weight: float = 1.0,
                 span_class_weight: Sequence[float] | None = None, span_detach: bool = False,
                 neutral_bias_grid: Sequence[float] | None = None, tune_split: str = "val"):
        super().__init__()
        if num_tags != len(TAGS):
            raise ValueError(f"num_tags={num_tags}: this head decodes the {len(TAGS)} tags none/pos/neu/neg")
        if polarity not in ("auto", "tags"):
            raise ValueError(f"polarity={polarity}: must be auto (the model's span classifier where it has one) or "
                             "tags (the majority of the tags)")
        self.polarity = polarity
        self._seen: list[PolarityDecider] = []  # the classifier of the last pass (in a list: not a submodule)
        self.span_weight, self.span_detach, self.tune_split = span_weight, span_detach, tune_split
        weight = None if span_class_weight is None else torch.tensor([float(w) for w in span_class_weight])
        if weight is not None and weight.shape != (3,):
            raise ValueError(f"span_class_weight={span_class_weight}: one weight per polarity (pos, neu, neg)")
        self.register_buffer("span_class_weight", weight, persistent=False)
        grid = None if neutral_bias_grid is None else torch.tensor([float(b) for b in neutral_bias_grid])
        self.register_buffer("bias_grid", grid, persistent=False)
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
            return outputs["emissions"].float(), "transitions" in outputs
        return outputs.float(), False

    def _classifier(self, outputs: Any) -> PolarityDecider | None:
        """The model's span classifier, when it has one and this head decides polarity with it."""
        if self.polarity == "tags" or not isinstance(outputs, dict):
            return None
        return outputs.get("span")

    def _stitched_states(self, outputs: Any, batch: dict[str, Any]) -> torch.Tensor:
        """(S, L, D) per-character states of whole sentences, stitched from their windows as the scores are."""
        states = outputs["states"].float()
        return states.reshape(-1, states.shape[-1])[batch["stitch"]]

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
            return per_char.mean() + self._span_loss(outputs, batch)
        weights = self.neutral_weight / (self.neutral_weight + (y == NEUTRAL).sum(1).float())
        return (weights * per_char).mean() + self._span_loss(outputs, batch)

    def _span_loss(self, outputs: Any, batch: dict[str, Any]) -> torch.Tensor | float:
        """`span_weight` times the span classifier's loss on the windows' gold Views (0 when the model has none;
        trained even with polarity=tags, so that one checkpoint can be scored both ways)."""
        span = outputs.get("span") if isinstance(outputs, dict) else None
        if span is None:
            return 0.0
        states = outputs["states"].float()
        if self.span_detach:
            states = states.detach()
        return self.span_weight * span.loss(states, batch["y"], batch["lengths"].to(states.device),
                                            self.span_class_weight)

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
        if self._emissions(outputs)[1]:
            start, end = outputs["start"].float() + self.free, outputs["end"].float() + self.free
        else:
            start = end = self.free
        first = viterbi(scores_, lengths, trans, start, end)
        if not (self.entity_pass and any(batch.get("matches") or [])):
            return first, first, probs
        bonus = self._bonus(batch, scores_.shape, scores_.device)
        return first, viterbi(scores_ + bonus, lengths, trans, start, end), probs

    def found(self, outputs: Any, batch: dict[str, Any]) -> tuple[list[list[tuple[int, int]]], np.ndarray,
                                                                     torch.Tensor]:
        """The (start, end) entity spans of each sentence, the (S, L) first-pass tags and the (S, L, 4) tag
        probabilities."""
        first, second, probs = self.tag_paths(outputs, batch)
        lengths = batch["sentence_lengths"]
        matches = batch.get("matches") or [[] for _ in range(len(lengths))]
        use_list = self.entity_pass and self.split_at_matches
        second_np = second.cpu().numpy()
        runs = [_tiled(_runs(second_np[s, :n]), matches[s] if use_list else [])
                for s, n in enumerate(lengths.tolist())]
        return runs, first.cpu().numpy(), probs

    def span_scores(self, outputs: Any, batch: dict[str, Any], runs: list[list[tuple[int, int]]]) -> torch.Tensor:
        """(K, 3) scores of positive, neutral, negative for the spans `runs` (sentence by sentence, in order), from
        the span classifier over the sentences' stitched states."""
        stitched = self._stitched_states(outputs, batch)
        spans = torch.tensor([(s, a, b) for s, r in enumerate(runs) for a, b in r], dtype=torch.long,
                             device=stitched.device).reshape(-1, 3)
        if not len(spans):
            return stitched.new_zeros((0, 3))
        return outputs["span"](stitched, spans, batch["sentence_lengths"].to(stitched.device))

    def decode_spans(self, outputs: Any, batch: dict[str, Any]) -> tuple[list[list[Span]], torch.Tensor]:
        """The entity spans of each sentence of the batch, and the (S, L, 4) tag probabilities."""
        runs, first_np, probs = self.found(outputs, batch)
        span = self._classifier(outputs)
        if span is not None:
            tags = span.decide(self.span_scores(outputs, batch, runs))[0]
            return _with_tags(runs, tags.tolist()), probs
        probs_np = probs.detach().cpu().numpy()
        return [[(a, b, _majority(first_np[s, a:b], probs_np[s, a:b])) for a, b in r]
                for s, r in enumerate(runs)], probs

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
        span = self._classifier(outputs)
        if span is None:
            counts = np.zeros(len(COUNTS), dtype=np.int64)
            for gold, unseen, pred in zip(batch["gold"], batch["gold_unseen"], self.decode(outputs, batch)):
                counts += sentence_counts(gold, pred, unseen)
            self.accumulate("score", torch.from_numpy(counts).to(device=device, dtype=torch.float64))
            return
        # the span classifier: the triples at each neutral bias of the grid on the tuning split, else at the saved one
        biases = self._biases(span)
        runs, _, _ = self.found(outputs, batch)
        tags = span.decide(self.span_scores(outputs, batch, runs), biases).tolist()  # (G, K)
        counts = np.zeros((len(biases), len(COUNTS)), dtype=np.int64)
        for g, row in enumerate(tags):
            spans = _with_tags(runs, row)
            for gold, unseen, text, s in zip(batch["gold"], batch["gold_unseen"], batch["texts"], spans):
                counts[g] += sentence_counts(gold, pairs_of(text, s), unseen)
        self.accumulate("score_by_bias", torch.from_numpy(counts).to(device=device, dtype=torch.float64))
        if "y" in batch:  # the classifier on the gold Views, as tagged: right calls per bias, and how many
            y = batch["y"].reshape(-1)[batch["stitch"]]
            inside = torch.arange(y.shape[1], device=y.device)[None, :] < batch["sentence_lengths"][:, None]
            gold = gold_spans(torch.where(inside, y, torch.zeros_like(y)))
            if len(gold):
                stitched = self._stitched_states(outputs, batch)
                scores_ = span(stitched, gold[:, :3], batch["sentence_lengths"].to(stitched.device))
                right = (span.decide(scores_, biases) == gold[None, :, 3]).sum(1)
                self.accumulate("span_right", right.double())
                self.accumulate("span_gold", torch.tensor(float(len(gold)), device=device, dtype=torch.float64))

    def _biases(self, span: PolarityDecider) -> torch.Tensor:
        """The neutral biases scored in this pass: the grid on the tuning split, else the classifier's saved one."""
        self._seen[:] = [span]
        return self.bias_grid if self._tuning() else span.neutral_bias[None]

    def _tuning(self) -> bool:
        return self.bias_grid is not None and self.split == self.tune_split

    def _chosen(self, s: dict[str, torch.Tensor]) -> int:
        """Index of the neutral bias to report: the best triple F1 of the grid (ties: the first), else 0."""
        by_bias = s["score_by_bias"]
        if len(by_bias) == 1:
            return 0
        return int(np.argmax([scores(row.tolist())["f1"] for row in by_bias]))

    def compute(self) -> dict[str, float]:
        s = self.sums()
        if not s:
            return {}
        metrics = {"loss": float(s["nll_sum"] / s["chars"].clamp(min=1))} if "nll_sum" in s else {}
        if "score_by_bias" not in s:
            metrics.update(scores(s["score"].tolist()))
            return metrics
        g = self._chosen(s)
        metrics.update(scores(s["score_by_bias"][g].tolist()))
        if self._tuning() or self._seen:  # (a rank that scored no batch has not seen the classifier)
            metrics["neutral_bias"] = float(self.bias_grid[g] if self._tuning() else self._seen[0].neutral_bias)
        if "span_gold" in s:
            metrics["span_acc"] = float(s["span_right"][g] / s["span_gold"].clamp(min=1))
        return metrics

    def on_validation_end(self, split: str, run_dir: Path | None) -> None:
        """On the tuning split, write the neutral bias of the best triple F1 into the classifier (saved with these
        weights)."""
        if not (self.bias_grid is not None and split == self.tune_split and self._seen
                and "score_by_bias" in self.reduced):
            return
        self._seen[0].neutral_bias.fill_(float(self.bias_grid[self._chosen(self.reduced)]))


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


def _with_tags(runs: list[list[tuple[int, int]]], tags: list[int]) -> list[list[Span]]:
    """The (start, end) runs of each sentence with the tags given for all of them in order."""
    out, k = [], 0
    for r in runs:
        out.append([(a, b, t) for (a, b), t in zip(r, tags[k : k + len(r)])])
        k += len(r)
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
