"""Head for Chinese word segmentation as s/b/m/e character tagging (problem 3 of docs/problems.md).

- Loss: per-character cross-entropy over the four tags, padding masked out. A model that also returns learned
  transition scores (a dict with "emissions", "transitions", "start", "end", see `trainer.models.seg_resfcn`) is trained
  as a linear-chain CRF instead: its negative log-likelihood, per character.
- Decoding: Viterbi over the allowed transitions only (ss, sb, bm, be, mm, me, es, eb; a clause starts with s or b
  and ends with s or e), on log-softmax scores (plus the learned transitions of a CRF). A user dictionary
  (`dictionary=PATH`, lines of `word,multiplier`) adds log(multiplier) to the tags of every occurrence of its words
  before Viterbi ("hard decoding", see `cws_dictionary`).
- Metrics: the SIGHAN bakeoff's, line by line as its `score` script computes them (see `sighan_score`): word
  precision, recall, F1, OOV rate, OOV recall and IV recall (OOV = not in the training word list). The per-line
  counts are summed on the device, so one all-reduce gives exact totals under DDP.

Evaluation and prediction batches hold whole lines (`trainer.datasets.segmentation.SentenceDataset`): the clauses of each
line, "clauses_per_sentence", the clause strings "texts" and, to score, "gold" words with their "gold_iv" flags.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from trainer.datasets.cws_formats import tags_to_words

from .base import Head
from .cws_dictionary import UserDictionary
from .sighan_score import COUNTS, line_counts, scores
from .viterbi import crf_nll, tag_mask, transition_mask, viterbi

TAGS = "sbme"
ALLOWED = ("ss", "sb", "bm", "be", "mm", "me", "es", "eb")


class SbmeTagger(Head):
    monitor, monitor_mode = "f1", "max"

    def __init__(self, dictionary: str | None = None):
        super().__init__()
        # constraints, not learned; rebuilt from code, so not saved in checkpoints
        self.register_buffer("allowed", transition_mask(TAGS, ALLOWED), persistent=False)
        self.register_buffer("allowed_start", tag_mask(TAGS, "sb"), persistent=False)
        self.register_buffer("allowed_end", tag_mask(TAGS, "se"), persistent=False)
        self.dictionary = UserDictionary.load(dictionary) if dictionary else None

    # --- scores ------------------------------------------------------------------------------------------------
    def _scores(self, outputs: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, bool]:
        """Emissions (B, T, 4) and the constrained transition, start and end scores; whether it is a CRF."""
        if isinstance(outputs, dict):
            em = outputs["emissions"].float()
            return (em, outputs["transitions"].float() + self.allowed, outputs["start"].float() + self.allowed_start,
                    outputs["end"].float() + self.allowed_end, True)
        return outputs.float(), self.allowed, self.allowed_start, self.allowed_end, False

    def _nll_sum(self, outputs: Any, batch: dict[str, Any]) -> torch.Tensor:
        em, trans, start, end, crf = self._scores(outputs)
        if crf:
            return crf_nll(em, batch["y"], batch["lengths"], trans, start, end)
        return F.cross_entropy(em.flatten(0, 1), batch["y"].flatten(), ignore_index=-100, reduction="sum")

    def loss(self, outputs: Any, batch: dict[str, Any]) -> torch.Tensor:
        """Mean over characters."""
        return self._nll_sum(outputs, batch) / batch["lengths"].sum().clamp(min=1)

    # --- decoding ----------------------------------------------------------------------------------------------
    def decode_tags(self, outputs: Any, batch: dict[str, Any]) -> list[list[int]]:
        """The tag ids of each clause of the batch."""
        em, trans, start, end, crf = self._scores(outputs)
        if not crf:
            em = em.log_softmax(-1)
        if self.dictionary is not None and len(self.dictionary):
            if "texts" not in batch:
                raise ValueError("dictionary decoding needs the clause strings (batch['texts'])")
            em = em + torch.from_numpy(self.dictionary.bonuses(batch["texts"], em.shape[1])).to(em.device)
        lengths = batch["lengths"]
        paths = viterbi(em, lengths, trans, start, end).cpu().tolist()
        return [p[:n] for p, n in zip(paths, lengths.tolist())]

    def decode(self, outputs: Any, batch: dict[str, Any]) -> list[list[str]]:
        """The words of each line of the batch."""
        if "clauses_per_sentence" not in batch:
            raise ValueError("sbme_tagger decodes line batches (a SentenceDataset), not training clause batches")
        words = [tags_to_words(text, tags) for text, tags in zip(batch["texts"], self.decode_tags(outputs, batch))]
        out, at = [], 0
        for count in batch["clauses_per_sentence"]:
            out.append([w for clause in words[at : at + count] for w in clause])
            at += count
        return out

    # --- metrics -----------------------------------------------------------------------------------------------
    def update(self, outputs: Any, batch: dict[str, Any]) -> None:
        device = batch["lengths"].device
        self.accumulate("nll_sum", self._nll_sum(outputs, batch).double())
        self.accumulate("chars", batch["lengths"].sum().double())
        counts = np.zeros(len(COUNTS), dtype=np.int64)
        for truth, iv, test in zip(batch["gold"], batch["gold_iv"], self.decode(outputs, batch)):
            counts += line_counts(truth, test, iv)
        self.accumulate("sighan", torch.from_numpy(counts).to(device=device, dtype=torch.float64))

    def compute(self) -> dict[str, float]:
        s = self.sums()
        if not s:
            return {}
        metrics = {"loss": float(s["nll_sum"] / s["chars"].clamp(min=1))}
        metrics.update(scores(s["sighan"].tolist()))
        return metrics

