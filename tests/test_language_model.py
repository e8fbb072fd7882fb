"""The next-token pieces shared by problems 1 and 4: window samples within documents, and the LM head's metrics."""
from __future__ import annotations

import math

import numpy as np
import torch

from trainer.datasets.lm_windows import NextTokenWindows
from trainer.models.heads.language_model import IGNORE, NextTokenHead


def test_windows_are_left_padded_within_their_document():
    docs = [np.array([5, 6, 7]), np.array([8, 9])]
    ds = NextTokenWindows(docs, window=2, pad_id=0)
    assert len(ds) == 3  # every token but each document's first
    batch = ds.__getitems__([0, 1, 2])
    assert batch["x"].tolist() == [[0, 5], [5, 6], [0, 8]]  # doc 2's window never reaches into doc 1
    assert batch["y"].tolist() == [6, 7, 9]


def test_perplexity_is_exp_of_the_mean_nll_over_all_tokens():
    head = NextTokenHead()
    head.reset()
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.25], [0.25, 0.5, 0.25]]))
    head.update(logits, {"x": torch.zeros(2), "y": torch.tensor([0, 2])})
    head.update(logits[None, :1].expand(1, 2, 3), {"x": torch.zeros(1), "y": torch.tensor([[1, IGNORE]])})
    m = head.compute()
    nll = -(math.log(0.5) + math.log(0.25) + math.log(0.25)) / 3  # the padded position is not counted
    assert math.isclose(m["loss"], nll, rel_tol=1e-6) and math.isclose(m["perplexity"], math.exp(nll), rel_tol=1e-6)
    assert math.isclose(m["acc"], 1 / 3)
