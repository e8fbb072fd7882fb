"""Word segmentation scores as the SIGHAN bakeoffs compute them: the `score` script of icwb2-data (Richard Sproat
and Tom Emerson, SIGHAN 2003/2005).

What the script does, line by line of the gold ("truth") and system ("test") files:
- both lines are trimmed, the ideographic space U+3000 becomes a space, and each is split at whitespace; a line
  whose truth is empty is skipped (its test words are not counted either);
- the two word lists are written one word a line and compared with `diff -y`: a truth word counts as recalled,
  and a test word as precise, when diff leaves it unchanged. diff finds a minimal edit script, so the unchanged
  words are a longest common subsequence (LCS) of the two word lists: words are matched as strings, in order,
  not by character offsets (a misplaced word can still match a gold word elsewhere in the line);
- recall = matched / truth words, precision = matched / test words, F = 2PR / (P + R), over the whole file;
- OOV words are truth words missing from the dictionary (the training word list); OOV recall = 1 - missed OOV /
  OOV words, IV recall likewise; the OOV rate is OOV words / truth words.
- insertions, deletions and substitutions count diff's side-by-side marks: in a change of k truth and l test
  words, min(k, l) substitutions, then k - min deletions or l - min insertions.

Here the LCS is computed exactly. When several LCS exist, the one chosen here may differ from GNU diff's, which
can move a word between OOV and IV recall and change the insertion/deletion/substitution split (never P/R/F1 or
the matched totals, which any LCS gives alike); GNU diff's speed heuristics can, in rare long lines,
return a non-minimal script, which the script would then score a little lower.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from trainer.datasets.cws_formats import split_words

#: The counts kept per line and summed over a file (and over DDP ranks).
COUNTS = ("truth", "test", "matched", "oov", "oov_matched", "iv", "iv_matched", "insertions", "deletions",
          "substitutions")


def lcs_alignment(truth: Sequence[str], test: Sequence[str]) -> list[tuple[int, int]]:
    """Index pairs (i, j) of a longest common subsequence of two word lists, in order."""
    n, m = len(truth), len(test)
    head = 0
    while head < min(n, m) and truth[head] == test[head]:
        head += 1
    tail = 0
    while tail < min(n, m) - head and truth[n - 1 - tail] == test[m - 1 - tail]:
        tail += 1
    pairs = [(i, i) for i in range(head)]
    a, b = truth[head : n - tail], test[head : m - tail]
    if a and b:
        pairs.extend((head + i, head + j) for i, j in _lcs_pairs(a, b))
    pairs.extend((n - tail + k, m - tail + k) for k in range(tail))
    return pairs


def _lcs_table(a: Sequence[str], b: Sequence[str]):
    """table[i][j] = the LCS length of a[i:] and b[j:]."""
    rows, cols = len(a), len(b)
    if rows * cols < 256:
        table = [[0] * (cols + 1) for _ in range(rows + 1)]
        for i in range(rows - 1, -1, -1):
            row, below, ai = table[i], table[i + 1], a[i]
            for j in range(cols - 1, -1, -1):
                row[j] = below[j + 1] + 1 if ai == b[j] else max(below[j], row[j + 1])
        return table
    # one numpy pass per row: with c[j] = below[j+1] + 1 where a[i] == b[j], else below[j], the row is the running
    # maximum of c from the right (an LCS table never drops by more than 1 between neighbours)
    ids: dict[str, int] = {}
    a_ids = np.array([ids.setdefault(w, len(ids)) for w in a])
    b_ids = np.array([ids.setdefault(w, len(ids)) for w in b])
    equal = a_ids[:, None] == b_ids[None, :]
    table = np.zeros((rows + 1, cols + 1), dtype=np.int32)
    for i in range(rows - 1, -1, -1):
        below = table[i + 1]
        c = np.where(equal[i], below[1:] + 1, below[:-1])
        table[i, :cols] = np.maximum.accumulate(c[::-1])[::-1]
    return table


def _lcs_pairs(a: Sequence[str], b: Sequence[str]) -> list[tuple[int, int]]:
    table = _lcs_table(a, b)
    pairs, i, j = [], 0, 0
    while i < len(a) and j < len(b):
        if a[i] == b[j] and table[i][j] == table[i + 1][j + 1] + 1:
            pairs.append((i, j))
            i, j = i + 1, j + 1
        elif table[i + 1][j] >= table[i][j + 1]:
            i += 1
        else:
            j += 1
    return pairs


def line_counts(truth: Sequence[str], test: Sequence[str], truth_in_vocab: Iterable[bool]) -> np.ndarray:
    """The COUNTS of one line (all zero when the truth is empty, as the script skips such lines)."""
    out = np.zeros(len(COUNTS), dtype=np.int64)
    if not truth:
        return out
    in_vocab = list(truth_in_vocab)
    pairs = lcs_alignment(truth, test)
    matched = np.zeros(len(truth), dtype=bool)
    ins = dele = sub = 0
    prev_i = prev_j = -1
    for i, j in [*pairs, (len(truth), len(test))]:
        k, l = i - prev_i - 1, j - prev_j - 1  # unmatched truth and test words between two matches
        sub += min(k, l)
        dele += k - min(k, l)
        ins += l - min(k, l)
        prev_i, prev_j = i, j
        if i < len(truth):
            matched[i] = True
    iv = np.asarray(in_vocab, dtype=bool)
    out[:] = (len(truth), len(test), matched.sum(), (~iv).sum(), (matched & ~iv).sum(), iv.sum(),
              (matched & iv).sum(), ins, dele, sub)
    return out


def scores(counts: Sequence[float] | np.ndarray) -> dict[str, float]:
    """Precision, recall, F1, OOV rate, OOV recall and IV recall from summed COUNTS (0 where undefined)."""
    c = dict(zip(COUNTS, (float(v) for v in counts)))
    recall = c["matched"] / c["truth"] if c["truth"] else 0.0
    precision = c["matched"] / c["test"] if c["test"] else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "precision": precision, "recall": recall, "f1": f1,
        "oov_rate": c["oov"] / c["truth"] if c["truth"] else 0.0,
        "oov_recall": c["oov_matched"] / c["oov"] if c["oov"] else 0.0,
        "iv_recall": c["iv_matched"] / c["iv"] if c["iv"] else 0.0,
    }


def score_lines(dictionary: Iterable[str], truth_lines: Iterable[str], test_lines: Iterable[str]) -> np.ndarray:
    """Summed COUNTS of two files' lines, paired in order until the shorter ends (as the script reads them)."""
    words = set(dictionary)
    total = np.zeros(len(COUNTS), dtype=np.int64)
    for truth_line, test_line in zip(truth_lines, test_lines):
        truth = split_words(truth_line)
        total += line_counts(truth, split_words(test_line), (w in words for w in truth))
    return total
