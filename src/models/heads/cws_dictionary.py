"""A user dictionary for "hard decoding" of s/b/m/e taggers (Su Jianlin, 2017, the FCN segmenter of problem 3).

Each `word,multiplier` entry multiplies the probability of the word's tags wherever the word occurs in the text:
log(multiplier) is added to b on its first character, m on the middle ones and e on the last (s for a one-character
word), before Viterbi decoding. Above 1 the word is pushed to stay whole; below 1 it is pushed apart. Overlapping
matches all add up. Occurrences are found in one pass per text with an Aho-Corasick automaton (`pyahocorasick`),
whatever the size of the dictionary.
"""
from __future__ import annotations

import math
from pathlib import Path

import ahocorasick
import numpy as np

from trainer.datasets.cws_formats import B, E, M, S, read_user_dictionary


class UserDictionary:
    def __init__(self, entries: list[tuple[str, float]]):
        self.entries = entries
        self.automaton = ahocorasick.Automaton()
        for word, multiplier in entries:
            # a repeated word: the last line wins
            self.automaton.add_word(word, (len(word), math.log(multiplier)))
        if entries:
            self.automaton.make_automaton()

    @classmethod
    def load(cls, path: str | Path) -> UserDictionary:
        return cls(read_user_dictionary(path))

    def __len__(self) -> int:
        return len(self.entries)

    def bonuses(self, texts: list[str], width: int) -> np.ndarray:
        """(len(texts), width, 4) log-multipliers to add to the tag scores of each text's characters."""
        out = np.zeros((len(texts), width, 4), dtype=np.float32)
        if not self.entries:
            return out
        for row, text in enumerate(texts):
            for last, (n, bonus) in self.automaton.iter(text):
                first = last - n + 1
                if n == 1:
                    out[row, first, S] += bonus
                else:
                    out[row, first, B] += bonus
                    out[row, first + 1 : last, M] += bonus
                    out[row, last, E] += bonus
        return out
