"""Whole-captcha accuracy of captcha checkpoints font by font: does the reader read typefaces it never trained on?

Each font renders the same N captchas (seeds of their own, apart from every split's), at the checkpoint's image size;
a checkpoint reads them and the whole-captcha accuracy is reported per font and per group:
  - seen: fonts of the current pool that training draws in (dataset.fonts less dataset.held_out_fonts);
  - held out: the pool's held-out fonts (what val_unseen/test_unseen measure);
  - outside: fonts given with --outside (files or folders), in no pool: the check against fonts nobody chose with.

    python bench/captcha_fonts.py CKPT [CKPT ...] [--n 300] [--outside FONT_OR_DIR ...] [--json out.json]
        [--only FONT_STEM ...] [--bars]

Fonts are grouped by the project's current dataset config, so old and new checkpoints are read on the same renders;
the last lines give each checkpoint's accuracy over the fonts it never trained on (its own dataset.fonts less its
held-out fonts; the package's font alone for a checkpoint that predates font pools).

Beside each accuracy, in brackets: the same with an upper-case I read as l, or a lower-case l read as i, counted
right. Labels are case-insensitive, and many sans faces draw I and l as the same plain bar; the captcha package crops
each glyph to its ink and stretches it to the font's line height, so not even their heights differ. On such a face
no reader can tell the two labels apart: 2 of the 52 glyphs, a ceiling of (1 - 1/52)^4 = 92.5% whole-captcha.
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
from trainer.datasets.captcha import ALPHABET, _render_chunk, _seed, drawn_from, shown_text
from trainer.stages import build

SEED = 9_000  # apart from the splits' 1000..5000


def load_model(path: str) -> tuple[torch.nn.Module, dict]:
    state = ckpt.load(path)
    cfg = OmegaConf.create(state["config"])
    model = build(cfg.model, "model")
    model.load_state_dict({k[len("model."):]: v for k, v in state["net"].items() if k.startswith("model.")})
    return model.eval(), OmegaConf.to_container(cfg.dataset)


def renders(font: str, n: int, data: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The checkpoint's captchas (its length, alphabet and sizes) drawn in one font, by the task's own renderer, and
    the mixed-case characters each shows."""
    length, alphabet = data.get("length", 4), data.get("alphabet", ALPHABET)
    render_size = (data.get("render_width", 160), data.get("render_height", 60))
    _, _, images, labels = _render_chunk((SEED, 0, n, length, data["width"], data["height"], render_size, alphabet,
                                          (font,), 0.0))
    shown = np.array([list(shown_text(_seed(SEED, i), length, alphabet)) for i in range(n)])
    return images[:, None], labels, shown


@torch.inference_mode()
def read(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    """The label the model reads at each position of each captcha, in batches of 256."""
    return np.concatenate([model(torch.from_numpy(x[a:a + 256]).float().div_(255.0)).argmax(-1).numpy()
                           for a in range(0, len(x), 256)])


def accuracy(pred: np.ndarray, y: np.ndarray, shown: np.ndarray, alphabet: str) -> tuple[float, float]:
    """Whole-captcha accuracy, and the same with I and l taken for each other where the captcha shows one of them."""
    i_or_l = [alphabet.index(c) for c in "il" if c in alphabet]
    forgiven = np.isin(shown, ["I", "l"]) & np.isin(pred, i_or_l)
    return float((pred == y).all(1).mean()), float(((pred == y) | forgiven).all(1).mean())


def bar_reads(pred: np.ndarray, shown: np.ndarray, alphabet: str) -> str:
    """How the shown I and l glyphs were read: right, or as the other's label."""
    out = []
    for glyph, other in (("I", "l"), ("l", "i")):
        at = shown == glyph
        if at.any() and other in alphabet:
            right = (pred[at] == alphabet.index(glyph.lower())).mean()
            swapped = (pred[at] == alphabet.index(other)).mean()
            out.append(f"{glyph} ({at.sum()}): {right:.0%} right, {swapped:.0%} as {other}")
    return "; ".join(out)


def both(row: dict, path: str) -> str:
    return f"{row[path]:6.1%} ({row[f'{path} I=l']:6.1%})"


def mean(rows: list[dict]) -> dict:
    return {key: np.mean([r[key] for r in rows]) for key in rows[0] if isinstance(rows[0][key], float)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpts", nargs="+")
    parser.add_argument("--n", type=int, default=300, help="captchas per font")
    parser.add_argument("--outside", nargs="*", default=[], help="font files or folders in no pool")
    parser.add_argument("--json", help="write the table here too")
    parser.add_argument("--only", nargs="*", help="read only the fonts of these file stems (e.g. DejaVuSans cmss10)")
    parser.add_argument("--bars", action="store_true", help="also say, font by font, how each shown I and l was read")
    args = parser.parse_args()

    from hydra import compose, initialize_config_module
    with initialize_config_module(config_module="trainer.conf", version_base="1.3"):
        current = compose("config", overrides=["task=captcha"]).dataset
    chars = drawn_from(current.alphabet)
    pool = fontpool.resolve(list(current.fonts), chars, "dataset.fonts")
    train, held = fontpool.split_held_out(pool, list(current.held_out_fonts), "dataset.held_out_fonts")
    outside = fontpool.resolve(args.outside, chars, "--outside") if args.outside else []
    groups = [("seen", f) for f in train] + [("held out", f) for f in held] + [("outside", f) for f in outside]
    if args.only:
        groups = [(g, f) for g, f in groups if f.stem in args.only]

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
            key = (str(font), *(data.get(k) for k in ("width", "height", "length", "alphabet", "render_width",
                                                          "render_height")))
            if key not in cache:
                cache[key] = renders(str(font), args.n, data)
            seen = font.resolve() in trained_on[path]
            x, y, shown = cache[key]
            pred, alphabet = read(model, x), data.get("alphabet", ALPHABET)
            row[path], row[f"{path} I=l"] = accuracy(pred, y, shown, alphabet)
            row[f"{path} seen"] = seen
            row[f"{path} bars"] = bar_reads(pred, shown, alphabet) if args.bars else ""
        rows.append(row)
        print(f"{group:9s} {font.stem:28s} " + " ".join(both(row, p) for p, *_ in models), flush=True)
        for path, *_ in models:
            if row[f"{path} bars"]:
                print(f"          {path}: {row[f'{path} bars']}")
    print(f"({args.n} captchas a font, {time.monotonic() - t0:.0f} s; in brackets: I and l taken for each other)")
    for group in ("seen", "held out", "outside"):
        part = [r for r in rows if r["group"] == group]
        if part:
            print(f"{group:9s} {'mean of ' + str(len(part)) + ' fonts':28s} "
                  + " ".join(both(mean(part), p) for p, *_ in models))
    for path, *_ in models:
        never = [r for r in rows if not r[f"{path} seen"]]
        print(f"{path}: fonts it never trained on: mean {np.mean([r[path] for r in never]):.1%} "
              f"({np.mean([r[f'{path} I=l'] for r in never]):.1%} with I and l taken for each other), "
              f"worst {min(r[path] for r in never):.1%} ({len(never)} fonts)")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
