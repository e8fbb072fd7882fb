"""Per-class, per-S/N and per-redshift breakdown of a spectra checkpoint on the SYNTHETIC simulator's test split.

    python bench/spectra_breakdown.py RUN_DIR_OR_CKPT [--split test] [--ckpt-name best.pt] [--cache-dir DIR]

RUN_DIR means its checkpoints/best.pt (`--ckpt-name best-ce.pt` scores stage 1's best instead). The model and dataset
are rebuilt from the checkpoint's own config; the split's facts (true type, g-band S/N, redshift, defect) come from
the simulator's cache (`meta_*`). Writes breakdown_<split>[_<ckpt>].md beside the checkpoint's run and prints it:
  - per class: F1, precision, recall (the head's numbers, recomputed here from the same predictions);
  - per S/N bin (the delivered spectrum's median S/N in 4,100-5,500 A): per-class recall and the bin's macro-F1;
  - per redshift bin for galaxies and QSOs: recall (and where they went);
  - unknowns by cause: defect kind, or the true type of an unidentified faint object.
Also a bootstrap 95% interval of the macro-F1 (1,000 resamples of the split).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict

from trainer.datasets import spectra_sim as sim

SNR_BINS = [0, 3, 5, 8, 12, 20, 40, 1e9]
Z_BINS = {"galaxy": [0.0, 0.05, 0.1, 0.15, 0.2, 0.3], "qso": [0.1, 0.4, 0.9, 1.4, 2.0, 2.6, 3.2, 4.0]}


def f1_table(y: np.ndarray, p: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    conf = np.zeros((k, k), dtype=np.int64)
    np.add.at(conf, (y, p), 1)
    tp = np.diag(conf).astype(float)
    prec = tp / np.maximum(conf.sum(0), 1)
    rec = tp / np.maximum(conf.sum(1), 1)
    f1 = np.where(prec + rec > 0, 2 * prec * rec / np.maximum(prec + rec, 1e-12), 0.0)
    return f1, prec, rec


def macro(y: np.ndarray, p: np.ndarray, k: int) -> float:
    f1, _, _ = f1_table(y, p, k)
    present = np.isin(np.arange(k), np.concatenate([y, p]))
    return float(f1[present].mean())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("path")
    ap.add_argument("--split", default="test")
    ap.add_argument("--ckpt-name", default="best.pt")
    ap.add_argument("--cache-dir", default=None, help="where the simulated splits are (default: the run's)")
    ap.add_argument("--batch", type=int, default=500)
    args = ap.parse_args()
    path = Path(args.path)
    ckpt = path / "checkpoints" / args.ckpt_name if path.is_dir() else path
    run_dir = ckpt.parent.parent
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    cfg = OmegaConf.create(state["config"])
    if args.cache_dir:
        with open_dict(cfg):
            cfg.dataset.cache_dir = args.cache_dir
    data = instantiate(cfg.dataset)
    data.load_state_dict(state.get("data") or {})
    data.setup("eval" if args.split != "train" else "fit")
    if args.split not in data.splits:
        sys.exit(f"no split '{args.split}' in this dataset (has {', '.join(data.splits)})")
    with open_dict(cfg):
        cfg.data_info = data.info
    model = instantiate(cfg.model)
    model.load_state_dict({k[len("model."):]: v for k, v in state["net"].items() if k.startswith("model.")})
    model.eval()
    ds = data.splits[args.split]
    n = len(ds)
    preds = []
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    with torch.inference_mode():
        for start in range(0, n, args.batch):
            batch = ds.__getitems__(list(range(start, min(start + args.batch, n))))
            preds.append(model(batch["x"]).argmax(-1).numpy())
    pred = np.concatenate(preds)
    y = np.asarray(ds.arrays["y"])
    names = list(data.class_names)
    k = len(names)
    meta = data.meta.get(args.split, {})
    lines = [f"# {ckpt} on the {args.split} split ({n:,} SYNTHETIC spectra)", ""]
    f1, prec, rec = f1_table(y, pred, k)
    rng = np.random.default_rng(0)
    boot = [macro(y[i], pred[i], k) for i in (rng.integers(0, n, n) for _ in range(1000))]
    lines += [f"macro-F1 {macro(y, pred, k):.4f} (bootstrap 95%: {np.percentile(boot, 2.5):.4f}-"
              f"{np.percentile(boot, 97.5):.4f})", "", "| class | n | F1 | precision | recall |", "|---|---|---|---|---|"]
    for c in range(k):
        lines.append(f"| {names[c]} | {int((y == c).sum()):,} | {f1[c]:.4f} | {prec[c]:.4f} | {rec[c]:.4f} |")
    if "snr_g" in meta:
        snr = meta["snr_g"]
        lines += ["", "Recall per g-band S/N bin (n in brackets) and the bin's macro-F1:", "",
                  "| S/N | " + " | ".join(names) + " | macro-F1 |", "|---" * (k + 2) + "|"]
        for lo, hi in zip(SNR_BINS[:-1], SNR_BINS[1:]):
            m = (snr >= lo) & (snr < hi)
            if not m.any():
                continue
            cells = []
            for c in range(k):
                mc = m & (y == c)
                cells.append(f"{(pred[mc] == c).mean():.3f} ({mc.sum()})" if mc.any() else "-")
            label = f"{lo:g}-{hi:g}" if hi < 1e8 else f">= {lo:g}"
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {macro(y[m], pred[m], k):.3f} |")
    if "z" in meta:
        for kind, edges in Z_BINS.items():
            c = names.index(kind)
            lines += ["", f"{kind}: recall per redshift bin, and what the misses were called:", "",
                      "| z | n | recall | called |", "|---|---|---|---|"]
            for lo, hi in zip(edges[:-1], edges[1:]):
                m = (y == c) & (meta["z"] >= lo) & (meta["z"] < hi)
                if not m.any():
                    continue
                miss = np.bincount(pred[m & (pred != c)], minlength=k)
                called = ", ".join(f"{names[j]} {miss[j]}" for j in range(k) if miss[j]) or "-"
                lines.append(f"| {lo:g}-{hi:g} | {m.sum()} | {(pred[m] == c).mean():.3f} | {called} |")
    if "defect" in meta:
        u = names.index("unknown")
        lines += ["", "unknowns by cause: recall (n)", "", "| cause | n | recall |", "|---|---|---|"]
        for d, dname in enumerate(sim.DEFECTS):
            m = (y == u) & (meta["defect"] == d)
            if d == 0:
                for t, tname in enumerate(sim.TRUE_TYPES):
                    mt = m & (meta["true_type"] == t)
                    if mt.any():
                        lines.append(f"| faint {tname} (below the pipeline's S/N) | {mt.sum()} | "
                                     f"{(pred[mt] == u).mean():.3f} |")
            elif m.any():
                lines.append(f"| defect: {dname} | {m.sum()} | {(pred[m] == u).mean():.3f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    suffix = "" if args.ckpt_name == "best.pt" else "_" + Path(args.ckpt_name).stem
    out = run_dir / f"breakdown_{args.split}{suffix}.md"
    out.write_text(text)
    print(f"(written to {out})")


if __name__ == "__main__":
    main()
