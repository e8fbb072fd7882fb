"""Whole-captcha accuracy of captcha checkpoints font by font: does the reader read typefaces it never trained on?

Each font renders the same N captchas (seeds of their own, apart from every split's), at the checkpoint's image size;
a checkpoint reads them and the whole-captcha accuracy is reported per font and per group:
  - seen: fonts of the current pool that training draws in (dataset.fonts less dataset.held_out_fonts);
  - held out: the pool's held-out fonts (what val_unseen/test_unseen measure);
  - outside: fonts given with --outside (files or folders), in no pool: the check against fonts nobody chose with.

    python bench/captcha_fonts.py CKPT [CKPT ...] [--n 300] [--outside FONT_OR_DIR ...] [--json out.json]

Fonts are grouped by the project's current dataset config, so old and new checkpoints are read on the same renders;
the last lines give each checkpoint's accuracy over the fonts it never trained on (its own dataset.fonts less its
held-out fonts; the package's font alone for a checkpoint that predates font pools).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from trainer import checkpoint as ckpt
from trainer.datasets import fonts as fontpool
from trainer.datasets.captcha import ALPHABET, _render_chunk, drawn_from
from trainer.stages import build

SEED = 9_000  # apart from the splits' 1000..5000


def load_model(path: str) -> tuple[torch.nn.Module, dict]:
    state = ckpt.load(path)
    cfg = OmegaConf.create(state["config"])
    model = build(cfg.model, "model")
    model.load_state_dict({k[len("model."):]: v for k, v in state["net"].items() if k.startswith("model.")})
    return model.eval(), OmegaConf.to_container(cfg.dataset)


def renders(font: str, n: int, data: dict) -> tuple[np.ndarray, np.ndarray]:
    """The checkpoint's captchas (its length, alphabet and sizes) drawn in one font, by the task's own renderer."""
    render_size = (data.get("render_width", 160), data.get("render_height", 60))
    _, _, images, labels = _render_chunk((SEED, 0, n, data.get("length", 4), data["width"], data["height"],
                                          render_size, data.get("alphabet", ALPHABET), (font,), 0.0))
    return images[:, None], labels


@torch.inference_mode()
def accuracy(model: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    right = []
    for a in range(0, len(x), 256):
        logits = model(torch.from_numpy(x[a:a + 256]).float().div_(255.0))
        right.append((logits.argmax(-1).numpy() == y[a:a + 256]).all(1))
    return float(np.concatenate(right).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpts", nargs="+")
    parser.add_argument("--n", type=int, default=300, help="captchas per font")
    parser.add_argument("--outside", nargs="*", default=[], help="font files or folders in no pool")
    parser.add_argument("--json", help="write the table here too")
    args = parser.parse_args()

    from hydra import compose, initialize_config_module
    with initialize_config_module(config_module="trainer.conf", version_base="1.3"):
        current = compose("config", overrides=["task=captcha"]).dataset
    chars = drawn_from(current.alphabet)
    pool = fontpool.resolve(list(current.fonts), chars, "dataset.fonts")
    train, held = fontpool.split_held_out(pool, list(current.held_out_fonts), "dataset.held_out_fonts")
    outside = fontpool.resolve(args.outside, chars, "--outside") if args.outside else []
    groups = [("seen", f) for f in train] + [("held out", f) for f in held] + [("outside", f) for f in outside]

    models = [(p, *load_model(p)) for p in args.ckpts]
    trained_on = {}  # the fonts each checkpoint trained on (the package's alone before font pools)
    for path, _, data in models:
        own = fontpool.resolve(list(data.get("fonts") or ["captcha"]), chars, f"{path}: dataset.fonts")
        own, _ = fontpool.split_held_out(own, list(data.get("held_out_fonts") or []), f"{path}: held_out_fonts")
        trained_on[path] = {f.resolve() for f in own}
    rows: list[dict] = []
    t0 = time.monotonic()
    cache: dict[tuple, tuple] = {}
    for group, font in groups:
        row = {"group": group, "font": font.stem}
        for path, model, data in models:
            key = (str(font), data["width"], data["height"])
            if key not in cache:
                cache[key] = renders(str(font), args.n, data)
            seen = font.resolve() in trained_on[path]
            row[path] = accuracy(model, *cache[key])
            row[f"{path} seen"] = seen
        rows.append(row)
        print(f"{group:9s} {font.stem:28s} " + " ".join(f"{row[p]:6.1%}" for p, *_ in models), flush=True)
    print(f"({args.n} captchas a font, {time.monotonic() - t0:.0f} s)")
    for group in ("seen", "held out", "outside"):
        part = [r for r in rows if r["group"] == group]
        if part:
            print(f"{group:9s} {'mean of ' + str(len(part)) + ' fonts':28s} "
                  + " ".join(f"{np.mean([r[p] for r in part]):6.1%}" for p, *_ in models))
    for path, *_ in models:
        never = [r[path] for r in rows if not r[f"{path} seen"]]
        print(f"{path}: fonts it never trained on: mean {np.mean(never):.1%}, worst {min(never):.1%} "
              f"({len(never)} fonts)")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
