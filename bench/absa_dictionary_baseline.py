"""The floor for problem 1 (aspect sentiment): a dictionary of the training split's Views, matched longest-first
(leftmost-longest, non-overlapping, Aho-Corasick), every match called neutral; scored with the task's own metric
on the task's own splits (the same DataModule, so the same sentences).

    python bench/absa_dictionary_baseline.py [--data-dir DATA (default: data)] [--round final|first]
        [--test-views random|unseen] [--split test|val|folds] [--polarity neu|majority|context] [--compose no yes]
        [--polarity-extra final|first] [--c-grid C...] [--errors]

`--polarity majority` gives each match the polarity its View most often has in training instead (a stronger floor);
`--polarity context` decides each match's polarity from the text around it: a logistic regression on the TF-IDF of
the character 1- to 3-grams of the 40 characters each side (the View itself masked), trained on the training split's
gold spans (every mention of its Views, tagged as the model's training tags them), its C chosen by 5-fold
cross-validation (scikit-learn, the `bench` extra): the simple strong baseline for the polarity half of the task.
`--polarity-extra first` trains it on the other round's labelled texts as well (each window marked with its source,
so that each round keeps its own mix of polarities; C is then cross-validated over both); `--c-grid` sets its C
values. `--compose yes` joins the matches into Views the list lacks, as `dataset.compose_matches` does (brand +
model, model + code; datasets/absa.py EntityMatcher). `--split folds` scores the training split out of fold: each
fifth with the dictionary of the other four (the folds of `dataset.match_feature`). `--errors` adds the errors by
kind under each row. Prints one table row per setting and the wall time.
"""
from __future__ import annotations

import argparse
import collections
import time
from pathlib import Path

import numpy as np
import torch

from trainer.datasets.absa import BdciAbsa, EntityMatcher, gold_pairs, sentence_tags
from trainer.models.heads.absa_score import COUNTS, scores, sentence_counts
from trainer.models.heads.entity_polarity import pairs_of
from trainer.models.span_polarity import gold_spans


FOLDS = 5
POLARITY = ("pos", "neu", "neg")


def _data(data_dir: str, round_: str, test_views: str) -> BdciAbsa:
    return BdciAbsa(root=str(Path(data_dir) / "absa-bdci2016"), round=round_,
                    unknown_ids="skip" if round_ == "first" else "error", test_views=test_views)


def run(data_dir: str, round_: str, test_views: str, split: str, polarity: str, compose: bool,
        polarity_extra: str | None = None, grid: tuple[float, ...] = (1, 3, 10, 30, 100),
        context_options: dict | None = None) -> dict[str, float]:
    """The metric's scores of one setting; `context_options` go to `ContextPolarity` (its vectorizer, a fixed C)."""
    data = _data(data_dir, round_, test_views)
    parts = data._parts()
    train = parts["train"]
    extra = []  # the other round's labelled texts, all of them: more mentions for the context polarity to learn from
    if polarity == "context" and polarity_extra and polarity_extra != round_:
        extra = [s for p in _data(data_dir, polarity_extra, "random")._parts().values() for s in p]
    if split != "folds":
        counts, errors = score(train, parts[split], polarity, compose, extra, grid, context_options)
        n = len(parts[split])
    else:  # each fifth of the training split, matched with the other four fifths' Views (the DataModule's folds)
        fold = np.random.default_rng([data.split_seed, 1]).permutation(len(train)) % FOLDS
        counts, errors = np.zeros(len(COUNTS), dtype=np.int64), collections.Counter()
        for k in range(FOLDS):
            c, e = score([s for s, f in zip(train, fold) if f != k], [s for s, f in zip(train, fold) if f == k],
                         polarity, compose, extra, grid, context_options)
            counts, errors = counts + c, errors + e
        n = len(train)
    out = scores(counts.tolist())
    out["sentences"], out["errors"] = n, errors
    return out


def score(train: list, sentences: list, polarity: str, compose: bool, extra: list = (),
          grid: tuple[float, ...] = (1, 3, 10, 30, 100),
          context_options: dict | None = None) -> tuple[np.ndarray, collections.Counter]:
    """The metric's counts over `sentences` for the dictionary of `train`'s Views, and its errors by kind: Views
    missed (seen in training or not) and extra Views (a piece of a missed unseen View, or not)."""
    views = sorted({a.term for s in train for a in s.aspects})
    context = (ContextPolarity(train, extra=extra, grid=grid, **(context_options or {}))
               if polarity == "context" else None)
    usual = {}
    for view, counter in _polarity_counts(train).items():
        usual[view] = counter.most_common(1)[0][0]
    matcher = EntityMatcher(views, compose)
    matcher.blocked = matcher.codes_after(train)
    train_views = frozenset(views)
    counts = np.zeros(len(COUNTS), dtype=np.int64)
    errors: collections.Counter = collections.Counter()
    for s in sentences:
        spans = matcher(s.text)
        if context is not None:
            tags = context.predict(s.text, spans)
        else:
            tags = [1 + POLARITY.index(usual.get(s.text[a:b], "neu") if polarity == "majority" else "neu")
                    for a, b in spans]
        pred = pairs_of(s.text, [(a, b, t) for (a, b), t in zip(spans, tags)])
        gold = gold_pairs(s)
        counts += sentence_counts(gold, pred, [v not in train_views for v, _ in gold])
        found, wanted = {v for v, _ in pred}, {v for v, _ in gold}
        missed = wanted - found
        errors.update("missed, unseen" if v not in train_views else "missed, seen" for v in missed)
        errors.update("extra, a piece of a missed unseen View"
                      if any(v in m for m in missed if m not in train_views) else "extra, other"
                      for v in found - wanted)
    return counts, errors


class ContextPolarity:
    """Polarity tags 1..3 of spans from the characters around them (see the module docstring). `vectorizer` (a
    scikit-learn transformer; default the TF-IDF above) and a fixed `c` (default: chosen from `grid` by 5-fold
    cross-validation) are for `bench/absa_context_variants.py`."""

    #: marks each window with the data it came from: the extra round's texts carry another mix of polarities (the
    #: first round's Views are 56% neutral, the final's 85%), and this character's n-grams let the regression give
    #: each source its own prior while sharing the context's weights
    OWN, EXTRA = "\u2460", "\u2461"

    def __init__(self, train: list, context: int = 40, grid: tuple[float, ...] = (1, 3, 10, 30, 100),
                 extra: list = (), vectorizer=None, c: float | None = None):
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import GridSearchCV, StratifiedKFold

        self.context = context
        texts, labels = [], []
        self.mark = self.OWN if extra else ""  # without extra texts, the windows as they are
        for source, sentences in ((self.mark, train), (self.EXTRA, extra)):
            for s in sentences:  # the spans the model trains on: each run of one tag over the labelled mentions
                for _, a, b, tag in gold_spans(torch.from_numpy(sentence_tags(s)[0])[None]).tolist():
                    texts.append(source + self._window(s.text, a, b))
                    labels.append(tag)
        self.vectorizer = vectorizer or TfidfVectorizer(analyzer="char", ngram_range=(1, 3), sublinear_tf=True)
        x = self.vectorizer.fit_transform(texts)
        if c is not None:
            self.model = LogisticRegression(max_iter=2000, C=c).fit(x, labels)
            return
        search = GridSearchCV(LogisticRegression(max_iter=2000), {"C": list(grid)},
                              cv=StratifiedKFold(5, shuffle=True, random_state=0))
        self.model = search.fit(x, labels).best_estimator_
        print(f"  context polarity: {len(texts):,} training spans, C={search.best_params_['C']} by 5-fold CV")

    def _window(self, text: str, a: int, b: int) -> str:
        return text[max(0, a - self.context) : a] + "\u2588" + text[b : b + self.context]

    def predict(self, text: str, spans: list[tuple[int, int]]) -> list[int]:
        if not spans:
            return []
        windows = [self.mark + self._window(text, a, b) for a, b in spans]
        return self.model.predict(self.vectorizer.transform(windows)).tolist()


def _polarity_counts(sentences) -> dict[str, collections.Counter]:
    out: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for s in sentences:
        for a in s.aspects:
            out[a.term][a.polarity] += 1
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default="data")
    ap.add_argument("--round", nargs="+", default=["final", "first"])
    ap.add_argument("--test-views", nargs="+", default=["random", "unseen"])
    ap.add_argument("--split", default="test", choices=["test", "val", "folds"])
    ap.add_argument("--errors", action="store_true")
    ap.add_argument("--polarity", nargs="+", default=["neu", "majority"], choices=["neu", "majority", "context"])
    ap.add_argument("--compose", nargs="+", default=["no"], choices=["no", "yes"])
    ap.add_argument("--polarity-extra", choices=["final", "first"],
                    help="the context polarity also learns from this round's labelled texts (all of them)")
    ap.add_argument("--c-grid", type=float, nargs="+", default=[1, 3, 10, 30, 100],
                    help="the context polarity's C values for 5-fold cross-validation")
    args = ap.parse_args()
    if min(args.c_grid) <= 0:
        ap.error("--c-grid: C values must be positive")
    if args.polarity_extra and (args.polarity_extra in args.round or "context" not in args.polarity):
        print(f"(--polarity-extra {args.polarity_extra} applies to --polarity context on the other round only)")
    print("| round | test Views | polarity | composed | sentences | triple F1 | entity F1 | polarity acc "
          "| unseen recall |")
    print("|---|---|---|---|---|---|---|---|---|")
    for round_ in args.round:
        for test_views in args.test_views:
            for polarity in args.polarity:
                for compose in args.compose:
                    t0 = time.perf_counter()
                    m = run(args.data_dir, round_, test_views, args.split, polarity, compose == "yes",
                            args.polarity_extra, tuple(args.c_grid))
                    unseen = f"{m['unseen_recall']:.4f}" if "unseen_recall" in m else "-"
                    print(f"| {round_} | {test_views} | {polarity} | {compose} | {m['sentences']} | {m['f1']:.4f} | "
                          f"{m['entity_f1']:.4f} | {m['polarity_acc']:.4f} | {unseen} | "
                          f"({time.perf_counter() - t0:.1f} s)")
                    if args.errors:
                        print("  errors: " + ", ".join(f"{k} {v}" for k, v in sorted(m["errors"].items())))


if __name__ == "__main__":
    main()
