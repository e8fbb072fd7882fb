"""Linear probes of a trained lm_sentiment checkpoint: how much sentiment its encoder's features carry, apart from
how well a classifier stage trains on them.

Each review of the labelled split (1,000) and the test split (49,000), on the checkpoint's own vocabulary and
protocol, becomes three feature vectors, each scored by logistic regression with C chosen by 5-fold CV on the 1,000
labels (bench/lm_sentiment_baselines.py's `logistic_cv`, standardised features, C from 1e-4 to 100):
  embedding: the mean of the encoder's word embeddings over the review (a bag of pretrained word vectors);
  states:    the mean and max of the encoder's states over the review;
  both:      the two side by side;
  states + tfidf: the states' regression and bench/lm_sentiment_baselines.py's TF-IDF one (word 1-2-grams of the
             labelled reviews) averaged in probability: whether the LM's features and a bag of words are wrong
             on different reviews, so that a classifier reading both would gain.

  .venv/bin/python bench/lm_sentiment_probe.py outputs/lm_sentiment/RUN/checkpoints/best-lm.pt
  .venv/bin/python bench/lm_sentiment_probe.py CKPT --max-len 0      # whole reviews instead of the checkpoint's
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch


def features(encoder, dataset, batch: int = 512) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean embedding, [mean state, max state], labels) of every review of a ReviewDataset."""
    emb, states, labels = [], [], []
    with torch.no_grad():
        for start in range(0, len(dataset), batch):
            b = dataset.__getitems__(list(range(start, min(start + batch, len(dataset)))))
            x = b["x"]
            mask = (x != 0).unsqueeze(-1).float()
            n = mask.sum(1).clamp(min=1)
            h = encoder(x)
            emb.append(((encoder.embedding(x) * mask).sum(1) / n).numpy())
            states.append(torch.cat([(h * mask).sum(1) / n, h.masked_fill(mask == 0, -1e9).amax(1)], -1).numpy())
            labels.append(b["y"].numpy())
    return np.concatenate(emb), np.concatenate(states), np.concatenate(labels)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--max-len", type=int, default=None, help="tokens per review (0 = whole; default: the checkpoint's)")
    args = p.parse_args()

    from hydra.utils import instantiate
    from omegaconf import OmegaConf
    from sklearn.preprocessing import StandardScaler

    from lm_sentiment_baselines import id_texts, logistic_cv, tfidf_vectorizer
    from trainer import checkpoint as ckpt

    state = ckpt.load(args.checkpoint)
    cfg = OmegaConf.create(state["config"])
    cfg.dataset.view = "classify"
    if args.max_len is not None:
        cfg.dataset.max_len = args.max_len or None
    data = instantiate(cfg.dataset)
    data.load_state_dict(state["data"])
    data.setup("fit")
    encoder = instantiate(cfg.model.encoder)
    prefix = "model.encoder."
    encoder.load_state_dict({k[len(prefix):]: v for k, v in state["net"].items() if k.startswith(prefix)})
    encoder.eval()

    t0 = time.time()
    e_tr, s_tr, y_tr = features(encoder, data.splits["train"])
    e_te, s_te, y_te = features(encoder, data.splits["test"])
    print(f"features of {len(y_tr):,} + {len(y_te):,} reviews in {time.time() - t0:.0f}s", flush=True)
    results, probs = {}, {}
    for name, tr, te in (("embedding", e_tr, e_te), ("states", s_tr, s_te),
                         ("both", np.hstack([e_tr, s_tr]), np.hstack([e_te, s_te]))):
        scale = StandardScaler().fit(tr)
        # standardised dense features want more regularisation than TF-IDF's sparse ones: the grid reaches lower
        model, c, cv = logistic_cv(scale.transform(tr), y_tr, int(cfg.dataset.split_seed), np.logspace(-4, 2, 13))
        probs[name] = model.predict_proba(scale.transform(te))[:, 1]
        acc = float(((probs[name] > 0.5) == y_te).mean())
        results[name] = {"test_acc": round(acc, 4), "C": c, "cv_acc": round(cv, 4)}
        print(f"{name}: test acc {acc:.4f} (C={c:.3g}, 5-fold CV {cv:.4f})", flush=True)
    # the TF-IDF baseline of bench/lm_sentiment_baselines.py, on the checkpoint's own tokens
    vec = tfidf_vectorizer()
    x_tr = vec.fit_transform(id_texts(data.splits["train"]))
    model, c, cv = logistic_cv(x_tr, y_tr, int(cfg.dataset.split_seed))
    tfidf = model.predict_proba(vec.transform(id_texts(data.splits["test"])))[:, 1]
    for name, p in (("tfidf", tfidf), ("states + tfidf", (probs["states"] + tfidf) / 2)):
        acc = float(((p > 0.5) == y_te).mean())
        results[name] = {"test_acc": round(acc, 4)}
        print(f"{name}: test acc {acc:.4f}", flush=True)
    print(json.dumps({"checkpoint": args.checkpoint, "results": results}))


if __name__ == "__main__":
    main()
