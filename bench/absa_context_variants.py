"""Which parts of problem 1's context baseline matter: the regression of `absa_dictionary_baseline.py --polarity
context` (TF-IDF of the character 1-3-grams of 40 characters each side of a View, the View masked, logistic
regression) with and without the inverse document frequency, with raw or sublinear counts, with the n-grams hashed
into 2**18 buckets (as `model.span_linear` holds them), at C = 100 (what its cross-validation chose) or 10.

    python bench/absa_context_variants.py [--data-dir DATA] [--variants NAME...]

Scored as that bench scores: the composed dictionary's matches on the final round's test split, triple F1.
"""
from __future__ import annotations

import argparse
import time

import absa_dictionary_baseline as base

VARIANTS = ("tfidf_C100", "noidf_C100", "noidf_counts_C100", "hash18_C100", "hash18_noidf_C100", "tfidf_C10")


def _options(name: str) -> dict:
    """`ContextPolarity`'s vectorizer and fixed C for one variant's name."""
    from sklearn.feature_extraction.text import HashingVectorizer, TfidfTransformer, TfidfVectorizer
    from sklearn.pipeline import make_pipeline

    idf, sublinear = "noidf" not in name, "counts" not in name
    if name.startswith("hash18"):
        vectorizer = make_pipeline(HashingVectorizer(analyzer="char", ngram_range=(1, 3), n_features=1 << 18,
                                                     alternate_sign=False, norm=None),
                                   TfidfTransformer(sublinear_tf=sublinear, use_idf=idf))
    else:
        vectorizer = TfidfVectorizer(analyzer="char", ngram_range=(1, 3), sublinear_tf=sublinear, use_idf=idf)
    return {"vectorizer": vectorizer, "c": float(name.rsplit("_C", 1)[1])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default="data")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    args = ap.parse_args()
    print("| variant | triple F1 | entity F1 | polarity acc |\n|---|---|---|---|")
    for name in args.variants:
        t0 = time.perf_counter()
        m = base.run(args.data_dir, "final", "random", "test", "context", True, context_options=_options(name))
        print(f"| {name} | {m['f1']:.4f} | {m['entity_f1']:.4f} | {m['polarity_acc']:.4f} | "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
