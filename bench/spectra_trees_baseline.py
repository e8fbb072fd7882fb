"""A simple strong baseline for spectra (problem 8) on the SYNTHETIC simulator's own splits: each spectrum scaled by
its median |flux|, averaged into `--bins` wavelength bins, then gradient-boosted trees (scikit-learn's
HistGradientBoostingClassifier, 200 rounds; the `bench` extra). Scored with the same macro-F1 as the task, on the same test split as docs/results.md's runs.

    python bench/spectra_trees_baseline.py [--cache-dir data/cache] [--bins 260]

Reads the simulator's cache as the task writes it (`python -m trainer task=spectra` fills it once).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from omegaconf import open_dict

from spectra_breakdown import f1_table, macro


def features(x: np.ndarray, bins: int) -> np.ndarray:
    flux = x.reshape(len(x), -1).astype(np.float32)
    scale = np.maximum(np.median(np.abs(flux), axis=1, keepdims=True), 1e-6)
    flux = flux / scale
    usable = flux.shape[1] // bins * bins
    binned = flux[:, :usable].reshape(len(x), bins, -1).mean(-1)
    return np.concatenate([binned, np.log(scale)], axis=1)


def arrays(ds) -> tuple[np.ndarray, np.ndarray]:
    batch = ds.__getitems__(list(range(len(ds))))
    return batch["x"].numpy(), batch["y"].numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache-dir", default="data/cache")
    ap.add_argument("--bins", type=int, default=260)
    args = ap.parse_args()
    from sklearn.ensemble import HistGradientBoostingClassifier

    with initialize_config_module(config_module="trainer.conf", version_base="1.3"):
        cfg = compose("config", overrides=["task=spectra", f"paths.cache_dir={args.cache_dir}"])
    with open_dict(cfg):
        cfg.dataset.train_plan = None
    data = instantiate(cfg.dataset)
    data.setup("fit")
    t0 = time.perf_counter()
    (xtr, ytr), (xte, yte) = arrays(data.splits["train"]), arrays(data.splits["test"])
    ftr, fte = features(xtr, args.bins), features(xte, args.bins)
    clf = HistGradientBoostingClassifier(max_iter=200, random_state=0).fit(ftr, ytr)
    pred = clf.predict(fte)
    names = data.info["class_names"]
    k = len(names)
    f1, _, _ = f1_table(yte, pred, k)
    print(f"gradient-boosted trees on {args.bins} median-scaled flux bins: test macro-F1 {macro(yte, pred, k):.4f} "
          f"(per class {', '.join(f'{n} {v:.3f}' for n, v in zip(names, f1))}) on {len(yte):,} spectra, trained on {len(ytr):,}, "
          f"{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
