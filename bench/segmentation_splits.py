"""Score segmentation checkpoints on every held-out split at once: the line-position test (the last 10% of 1998-01),
the date-held-out test (the last 5 issues), their half-width versions, our conventions lines, and validation; with
the time each took (the figures of docs/results.md's segmentation section).

A model trained with either held-out split can be scored on both: the line split trains on lines before 16,561 and
the day split on issues 1-25 (lines before 16,736), and both tests lie after both training sets (the line test
starts at line 17,535, inside issue 27; the day test at 17,551, issue 27's first line).

    .venv/bin/python bench/segmentation_splits.py RUN_DIR_OR_CKPT [...] [--splits test@lines test@days ...]
    [--normalize-width on|off]   (score as if the checkpoint had been trained with it on or off: an input-side
                                  change, so its effect on a model trained without it can be measured)
    [--ensemble]                 (score the checkpoints as one model: the mean of their tag scores, CRF transitions
                                  included, then one Viterbi; they must share the data state: the same dataset
                                  config and training text, so that the same ids mean the same characters and words)
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from trainer import checkpoint  # noqa: E402
from trainer.inference import score  # noqa: E402
from trainer.stages import TaskNet  # noqa: E402

SPLITS = ["val@days", "test@lines", "test@days", "test_halfwidth@lines", "test_halfwidth@days", "conventions@days"]


def load(path: str):
    p = Path(path)
    if p.is_dir():
        p = p / "checkpoints" / "best.pt"
    state = checkpoint.load(p)
    return p, state, OmegaConf.create(state["config"])


class MeanOfModels(nn.Module):
    """The element-wise mean of several models' outputs (a tensor, or a dict of tensors such as a CRF's scores)."""

    def __init__(self, models: list[nn.Module]):
        super().__init__()
        self.models = nn.ModuleList(models)

    def forward(self, x: torch.Tensor):
        outs = [m(x) for m in self.models]
        if isinstance(outs[0], dict):
            return {k: torch.stack([o[k] for o in outs]).mean(0) for k in outs[0]}
        return torch.stack(outs).mean(0)


def same(a, b) -> bool:
    """Whether two data states hold the same values (tensors compared by value, not by pickled bytes)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


def build(paths: list[str]):
    """One net from one checkpoint, or from several that share their data state (the mean of their models); the
    first one's state and config, and a label naming the runs."""
    loaded = [load(path) for path in paths]
    p, state, saved = loaded[0]
    for other, other_state, _ in loaded[1:]:
        if not same(other_state["data"], state["data"]):
            raise SystemExit(f"--ensemble: {other} was trained on other data ids than {p} (dataset config or text)")
    models = []
    for _, member_state, member_cfg in loaded:
        member = TaskNet(instantiate(member_cfg.model), instantiate(member_cfg.head))
        member.load_state_dict(member_state["net"])
        models.append(member)
    net = models[0] if len(models) == 1 else TaskNet(MeanOfModels([m.model for m in models]), models[0].head)
    return state, saved, net, " + ".join(q.parent.parent.name for q, _, _ in loaded)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("ckpts", nargs="+")
    ap.add_argument("--splits", nargs="+", default=SPLITS)
    ap.add_argument("--normalize-width", choices=["on", "off"])
    ap.add_argument("--ensemble", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(2)
    print("| checkpoint | split | P | R | F1 | OOV rate | OOV recall | IV recall | seconds |")
    print("|---|---|---|---|---|---|---|---|---|")
    for paths in [args.ckpts] if args.ensemble else [[c] for c in args.ckpts]:
        state, saved, net, label = build(paths)
        modules = {}
        for name in args.splits:
            split, _, held_out = name.partition("@")
            held_out = held_out or saved.dataset.get("held_out", "lines")
            if held_out not in modules:
                cfg = saved.dataset.copy()
                with open_dict(cfg):
                    cfg.held_out = held_out
                data = instantiate(cfg)
                data.load_state_dict(state["data"])
                if args.normalize_width:
                    data.normalize_width = args.normalize_width == "on"
                    data.vocab.fold_width = data.normalize_width
                data.setup("eval")
                data.splits  # read and encode every split now, outside the timing
                modules[held_out] = data
            data = modules[held_out]
            start = time.perf_counter()
            m = score(net, data.loader(split), torch.device("cpu"), "fp32", split, progress=False)
            seconds = time.perf_counter() - start
            print(f"| {label} | {name} | {m['precision']:.2%} | {m['recall']:.2%} | **{m['f1']:.2%}** | "
                  f"{m['oov_rate']:.2%} | {m['oov_recall']:.1%} | {m['iv_recall']:.1%} | {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
