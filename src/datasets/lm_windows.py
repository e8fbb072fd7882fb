"""Next-token samples for a language model: the previous `window` tokens of a document predict the next one.

This is the language-model view of problems 1 (7 characters predict the next) and 4 (up to 10 words predict the
next). Documents are held as one concatenated id array with their start offsets, so a corpus of millions of tokens
costs two arrays, and a batch is one fancy-indexing operation (`__getitems__`): the windows of a document's first
tokens are left-padded with `pad_id`, never filled with the end of the previous document.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset


class NextTokenWindows(Dataset):
    """Sample i: x = the `window` ids before target position i (left-padded within its document), y = the id at i.

    Every token of a document except its first is a target (`min_context` > 1 skips more of each document's start).
    """

    def __init__(self, docs: Sequence[np.ndarray], window: int, pad_id: int = 0, min_context: int = 1):
        if window < 1:
            raise ValueError(f"window={window} must be >= 1")
        lengths = np.array([len(d) for d in docs], dtype=np.int64)
        self.tokens = np.concatenate([np.asarray(d, dtype=np.int64) for d in docs]) if len(docs) else \
            np.zeros(0, dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]) if len(docs) else np.zeros(0, dtype=np.int64)
        doc_of_token = np.repeat(np.arange(len(lengths)), lengths)
        offset = np.arange(len(self.tokens)) - np.repeat(starts, lengths)
        keep = offset >= min_context
        self.targets = np.flatnonzero(keep)
        self.starts = starts[doc_of_token[keep]]
        self.window, self.pad_id = window, pad_id

    def __len__(self) -> int:
        return len(self.targets)

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        idx = np.asarray(indices, dtype=np.int64)
        target = self.targets[idx]
        at = target[:, None] + np.arange(-self.window, 0)[None, :]
        inside = at >= self.starts[idx][:, None]
        x = np.where(inside, self.tokens[np.maximum(at, 0)], self.pad_id)
        return {"x": torch.from_numpy(x), "y": torch.from_numpy(self.tokens[target])}

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.__getitems__([index]).items()}
