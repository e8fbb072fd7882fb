"""The contest's score for aspect sentiment (CCF BDCI 2016, problem 1), and the entity-level figures beside it.

Per sentence, the gold and the predicted (View, polarity) pairs are compared as sets:
  - triple F1 (the contest's score): a pair is right when both the View and its polarity are; a wrong polarity,
    a missed View and an extra View each cost;
  - entity precision/recall/F1 over the Views alone;
  - polarity accuracy on the Views found correctly (right pairs over right Views);
  - recall of the gold Views missing from the training Views ("unseen").
Counts are summed over sentences (micro-averaged, as the contest summed them), so per-batch count vectors add up and
one all-reduce gives exact totals.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

COUNTS = ("gold", "pred", "tp", "gold_views", "pred_views", "tp_views", "gold_unseen", "tp_unseen")


def sentence_counts(gold: Sequence[tuple[str, str]], pred: Sequence[tuple[str, str]],
                    gold_unseen: Sequence[bool] | None = None) -> np.ndarray:
    """The COUNTS of one sentence. `gold_unseen[i]` says whether gold[i]'s View is not a training View."""
    gold_pairs, pred_pairs = set(gold), set(pred)
    gold_views, pred_views = {v for v, _ in gold}, {v for v, _ in pred}
    unseen = {v for (v, _), u in zip(gold, gold_unseen or [False] * len(gold)) if u}
    return np.array([len(gold_pairs), len(pred_pairs), len(gold_pairs & pred_pairs), len(gold_views),
                     len(pred_views), len(gold_views & pred_views), len(unseen), len(unseen & pred_views)],
                    dtype=np.int64)


def _f1(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r else 0.0


def scores(counts: Sequence[float]) -> dict[str, float]:
    c = dict(zip(COUNTS, (float(v) for v in counts)))
    p = c["tp"] / c["pred"] if c["pred"] else 0.0
    r = c["tp"] / c["gold"] if c["gold"] else 0.0
    ep = c["tp_views"] / c["pred_views"] if c["pred_views"] else 0.0
    er = c["tp_views"] / c["gold_views"] if c["gold_views"] else 0.0
    out = {"f1": _f1(p, r), "precision": p, "recall": r, "entity_f1": _f1(ep, er), "entity_precision": ep,
           "entity_recall": er, "polarity_acc": c["tp"] / c["tp_views"] if c["tp_views"] else 0.0}
    if c["gold_unseen"]:  # left out, not 0, when the split has no unseen View
        out["unseen_recall"] = c["tp_unseen"] / c["gold_unseen"]
    return out
