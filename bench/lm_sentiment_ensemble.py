"""Would a stronger self-training teacher come from averaging models? Two candidates for lm_sentiment (problem 4),
scored on the test split of the checkpoints' own protocol:

  mean:   the average, in probability, of several classifier checkpoints (the rounds' students, runs of the
          rounds from one LM): a teacher made of the rounds' students is only stronger if they are wrong on
          different reviews;
  linear: a second view of the text: TF-IDF of word 1-2-grams (fitted on the unlabelled and test texts, no labels)
          and logistic regression trained on the FIRST checkpoint's hard labels of every unlabelled review, as a
          self-training student of another kind would be; then its average with that checkpoint.

  .venv/bin/python bench/lm_sentiment_ensemble.py RUN/checkpoints/best.pt RUN/checkpoints/best-self_train_4.pt ...
  .venv/bin/python bench/lm_sentiment_ensemble.py RUN/checkpoints/best.pt --linear

Each checkpoint's DataModule is rebuilt from its own config and state (vocabulary), under the trainer's trust check
(trainer.trust: a checkpoint's config names only the project's classes); the test reviews must come in the same
order and with the same labels for all of them. A checkpoint of an ensemble (`model.bag_member=true`) is scored as the
trainer scores it, by its members' mean probability, and each member alone beside it. Needs scikit-learn for
--linear (pip install -e '.[bench]').
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch


def ensemble_accuracy(probabilities: list[np.ndarray], labels: np.ndarray) -> float:
    """Accuracy of the mean of the positive-class probabilities, 0.5 the boundary."""
    return float(((np.mean(probabilities, 0) > 0.5) == labels).mean())


def checkpoint_logits(path: str, splits: tuple[str, ...]) -> tuple[dict[str, np.ndarray], np.ndarray, object]:
    """The classifier logit of every review of each of `splits` (in the split's order), the test labels, and the
    DataModule, from a checkpoint written by `task=lm_sentiment`."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from trainer import checkpoint as ckpt
    from trainer.models.heads.classification import logits_of
    from trainer.trust import check_config

    state = ckpt.load(path)
    cfg = OmegaConf.create(state["config"])
    check_config(cfg, f"checkpoint {path}")
    cfg.dataset.view = "classify"
    data = instantiate(cfg.dataset)
    data.load_state_dict(state["data"])
    data.setup("eval")
    model = instantiate(cfg.model)
    model.load_state_dict({k[len("model."):]: v for k, v in state["net"].items() if k.startswith("model.")})
    model.eval()
    out = {}
    with torch.inference_mode():
        for split in splits:
            outputs = [model(batch["x"]) for batch in data.loader(split)]
            out[split] = torch.cat([logits_of(o).reshape(-1) for o in outputs]).numpy()
            if isinstance(outputs[0], dict) and "members" in outputs[0]:  # an ensemble: each member's logits too
                out[f"{split} members"] = torch.cat([o["members"] for o in outputs], 1).numpy()
    return out, np.asarray(data.splits["test"].labels), data


def linear_student(data, teacher_unlabelled: np.ndarray) -> np.ndarray:
    """P(positive) of each test review from logistic regression on TF-IDF word 1-2-grams, trained on the teacher's
    hard labels of every unlabelled review. C is fixed at 4: there are no true labels here to choose it by."""
    from sklearn.linear_model import LogisticRegression

    from lm_sentiment_baselines import id_texts, tfidf_vectorizer

    unlabelled, test = id_texts(data.splits["unlabelled"]), id_texts(data.splits["test"])
    vec = tfidf_vectorizer().set_params(min_df=2).fit(unlabelled + test)
    labels = (teacher_unlabelled > 0).astype(int)
    model = LogisticRegression(C=4.0, max_iter=3000).fit(vec.transform(unlabelled), labels)
    return model.predict_proba(vec.transform(test))[:, 1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--linear", action="store_true", help="also the TF-IDF student of the first checkpoint's labels")
    args = p.parse_args()

    t0 = time.time()
    probabilities, results, labels, first_data, first_unlabelled = [], {}, None, None, None
    for i, path in enumerate(args.checkpoints):
        splits = ("test", "unlabelled") if args.linear and i == 0 else ("test",)
        logits, y, data = checkpoint_logits(path, splits)
        if labels is None:
            labels, first_data, first_unlabelled = y, data, logits.get("unlabelled")
        elif len(y) != len(labels) or (y != labels).any():
            raise SystemExit(f"{path}: its test split differs from {args.checkpoints[0]}'s (another protocol or seed)")
        probabilities.append(1 / (1 + np.exp(-logits["test"])))
        results[path] = round(ensemble_accuracy(probabilities[-1:], labels), 4)
        members = [round(ensemble_accuracy([1 / (1 + np.exp(-m))], labels), 4) for m in logits.get("test members", [])]
        if members:
            results[f"{path} members"] = members
        print(f"{path}: test acc {results[path]:.4f}{f' (its members: {members})' if members else ''} "
              f"({time.time() - t0:.0f}s)", flush=True)
    if len(probabilities) > 1:
        results["mean"] = round(ensemble_accuracy(probabilities, labels), 4)
        print(f"mean of the {len(probabilities)}: test acc {results['mean']:.4f}", flush=True)
    if args.linear:
        student = linear_student(first_data, first_unlabelled)
        results["linear"] = round(ensemble_accuracy([student], labels), 4)
        results["linear + first"] = round(ensemble_accuracy([student, probabilities[0]], labels), 4)
        print(f"linear student: test acc {results['linear']:.4f}; averaged with {args.checkpoints[0]}: "
              f"{results['linear + first']:.4f} ({time.time() - t0:.0f}s)", flush=True)
    print(json.dumps({"checkpoints": args.checkpoints, "test_reviews": len(labels), "results": results}))


if __name__ == "__main__":
    main()
