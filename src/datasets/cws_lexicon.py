"""Word-list features for segmentation, as closed-track systems use the training word list (e.g. Zhang, Zhang & Fu,
2016, "Transition-Based Neural Word Segmentation"; Wang & Xu, 2017): for each character, the length of the longest
list word that starts at it, that ends at it, and that runs through it (the character strictly inside), each 0 when
there is none and capped at `max_len`. Only words of two characters or more count (nearly every character is a word
on its own). Matches are found with an Aho-Corasick automaton (`pyahocorasick`), one pass over the text; they never
cross a clause boundary.

The training text must not see a list built from itself: every word of it would be in the list, and the model would
learn to trust a match completely, which it meets nowhere else (unseen words never match). So the training text's
features come from out-of-fold lists (`out_of_fold`): the training lines are cut into k contiguous folds, and each
fold is matched against the words of the others. A word used in one stretch of the month only (a name in one story)
is then missing from its own fold's list, as an unseen word is from the test's. Validation, test and new text are
matched against the whole training list.
"""
from __future__ import annotations

from typing import Iterable

import ahocorasick
import numpy as np

from .cws_formats import fullwidth

FEATURES = 3  # longest word starting at, ending at, running through the character


class Lexicon:
    def __init__(self, words: Iterable[str], max_len: int, fold_width: bool):
        self.max_len, self.fold_width = max_len, fold_width
        self.automaton = ahocorasick.Automaton()
        count = 0
        for word in words:
            if len(word) >= 2:
                key = self._normal(word)
                self.automaton.add_word(key, len(key))
                count += 1
        self.size = count
        if count:
            self.automaton.make_automaton()

    def _normal(self, text: str) -> str:
        if not self.fold_width:
            return text
        points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        return fullwidth(points).tobytes().decode("utf-32-le")

    def features(self, clauses: list[str]) -> np.ndarray:
        """(total characters, 3) int8: longest list word starting at / ending at / running through each character of
        the clauses, end to end."""
        total = sum(map(len, clauses))
        out = np.zeros((total, FEATURES), dtype=np.int8)
        if not self.size or not total:
            return out
        joined = self._normal("\n".join(clauses))  # "\n" is in no clause and no word: matches stay inside clauses
        ends, lengths = [], []
        for end, length in self.automaton.iter(joined):
            ends.append(end)
            lengths.append(length)
        if not ends:
            return out
        end = np.asarray(ends, dtype=np.int64)
        n = np.asarray(lengths, dtype=np.int64)
        # joined position -> position in the clauses end to end (drop the separators before it)
        separators = np.cumsum(np.frombuffer(joined.encode("utf-32-le"), dtype=np.uint32) == 10)
        end = end - separators[end]
        start = end - n + 1
        value = np.minimum(n, self.max_len).astype(np.int8)
        np.maximum.at(out[:, 0], start, value)
        np.maximum.at(out[:, 1], end, value)
        inner = n > 2
        if inner.any():
            counts = n[inner] - 2
            first = np.repeat(start[inner] + 1, counts)
            offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
            np.maximum.at(out[:, 2], first + offsets, np.repeat(value[inner], counts))
        return out


def out_of_fold(words_per_line: list[list[str]], clauses_per_line: list[list[str]], folds: int, max_len: int,
                fold_width: bool) -> np.ndarray:
    """Features of training lines, each contiguous fold matched against the words of the other folds only."""
    n = len(words_per_line)
    bounds = np.linspace(0, n, folds + 1).round().astype(int)
    parts = []
    for k in range(folds):
        lo, hi = bounds[k], bounds[k + 1]
        others = {w for i in (*range(lo), *range(hi, n)) for w in words_per_line[i]}
        lexicon = Lexicon(others, max_len, fold_width)
        parts.append(lexicon.features([c for line in clauses_per_line[lo:hi] for c in line]))
    return np.concatenate(parts) if parts else np.zeros((0, FEATURES), dtype=np.int8)
