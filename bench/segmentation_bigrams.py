"""How the bigram features of task=segmentation cover the held-out text: the hashed table of the earlier model
against the bigram vocabulary of the current one (the figures quoted in docs/results.md).

Counts are over the units the model sees: clauses, each end paired with padding, character ids after the character
vocabulary (characters seen once share the unknown id). The earlier model hashed a pair of character ids (a, b)
into row (a * 1,000,003 + b) mod 262,144.

    .venv/bin/python bench/segmentation_bigrams.py [dataset.path]
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from trainer.datasets.segmentation import UNK, ClauseTable, PeopleDaily  # noqa: E402

HASH, BUCKETS = 1_000_003, 262_144  # the earlier SegResFCN's bigram hash


def occurrences(table: ClauseTable, vocab_size: int) -> np.ndarray:
    """Every bigram occurrence once: each character's left pair, plus each clause's end-of-clause pair."""
    left, right = table.bigram_keys(vocab_size)
    return np.concatenate([left, right[table.starts + table.lengths - 1]])


def main() -> None:
    data = PeopleDaily(sys.argv[1] if len(sys.argv) > 1 else None, bigram_min_count=2)
    data.setup()
    V = len(data.vocab)
    train, test = data.splits["train"].table, data.splits["test"].table
    keys, counts = np.unique(occurrences(train, V), return_counts=True)
    buckets = (keys // V * HASH + keys % V) % BUCKETS
    _, bucket_of, per_bucket = np.unique(buckets, return_inverse=True, return_counts=True)
    test_keys = occurrences(test, V)
    unseen = ~np.isin(test_keys, keys)
    unknown = test.inputs[:, 1:] == UNK
    print(f"training text: {len(keys):,} distinct bigrams, {int((counts >= 2).sum()):,} of them seen at least twice "
          f"(the vocabulary: {len(data.bigrams) - 2:,} ids + unknown + padding)")
    print(f"hashed into {BUCKETS:,} rows: {(per_bucket[bucket_of] > 1).mean():.1%} of the distinct training bigrams "
          f"share their row with another")
    print(f"held-out text: {len(test_keys):,} bigram occurrences, {unseen.mean():.1%} never seen in training")
    print(f"vocabulary: {unknown.mean():.1%} of the held-out characters' left/right bigrams get the unknown id")


if __name__ == "__main__":
    main()
