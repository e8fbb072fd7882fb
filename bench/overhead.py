"""Overhead of the generic loop against a minimal hand-written PyTorch loop and PyTorch Lightning's Trainer, in one
process.

The three loops train the same model (seeded identically) on the same batches in the same order. Our loop runs with
its progress bar (rendered to /dev/null as if on a terminal), CSV logging every 10 steps, per-epoch validation and
checkpoints; Lightning's Trainer with its defaults of the same kind (its tqdm progress bar, sent to /dev/null, its
CSVLogger every 10 steps, per-epoch validation, its checkpoint callback); the hand-written loop is forward /
backward / step and nothing else. Each optimizer step is timed by an optimizer step-post-hook in all three, and the
runs alternate (ours, plain, Lightning, ours, ...) so machine noise hits them alike.

Prints the median step time of each and the ratios to the hand loop (our target <= 1.03): pooled over all steps, and
as the median of the per-round ratios (each round runs the loops back to back, which cancels the machine's drift
between rounds). Then each loop's absolute cost per step, measured with a model so small that bookkeeping
dominates. Checks that the final training losses agree.

    pip install -e '.[bench]'      # lightning, beside the pinned torch
    python bench/overhead.py [--rounds 5] [--epochs 2] [--batch-size 64]
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.optim.optimizer import register_optimizer_step_post_hook

ROOT = Path(__file__).resolve().parents[1]


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose, initialize_config_module

    from trainer.cli import register_resolvers
    from trainer.invocation import CONF_PACKAGE

    register_resolvers()
    with initialize_config_module(config_module=CONF_PACKAGE, version_base="1.3"):
        return hydra_compose("config", overrides=overrides)


@contextlib.contextmanager
def timed_steps():
    """Time stamps after every optimizer step of any optimizer (a global step-post-hook), for both loops alike."""
    stamps: list[float] = []
    handle = register_optimizer_step_post_hook(lambda *_: stamps.append(time.perf_counter()))
    try:
        yield stamps
    finally:
        handle.remove()


def run_ours(cfg, workdir: Path) -> tuple[list[float], float]:
    from rich.console import Console

    import trainer.progress as progress
    from trainer.loggers import CSVLogger
    from trainer.loop import train_stage
    from trainer.run import seed_everything
    from trainer.stages import build_stage, stage_configs
    from trainer.state import Counters

    progress.console = Console(file=open(os.devnull, "w"), force_terminal=True)  # draw the bar, off-screen
    run_dir = Path(tempfile.mkdtemp(dir=workdir))
    seed_everything(int(cfg.seed), False)
    (name, scfg), = stage_configs(cfg)
    device, counters = torch.device("cpu"), Counters()
    stage = build_stage(scfg, name, 0, 1, run_dir, [CSVLogger(run_dir)], device, None, counters)
    with timed_steps() as stamps:
        train_stage(stage, device, None, counters)
    return stamps, final_loss(stage.net.model, stage.data)


def run_lightning(cfg, workdir: Path) -> tuple[list[float], float]:
    """The same model, data, seed and batches under Lightning's Trainer with its progress bar and CSV logging."""
    import lightning as L
    from hydra.utils import instantiate
    from lightning.pytorch.loggers import CSVLogger as LightningCSV
    from omegaconf import open_dict

    from trainer.run import seed_everything

    class Module(L.LightningModule):
        def __init__(self, model: torch.nn.Module, lr: float):
            super().__init__()
            self.model, self.lr = model, lr

        def on_train_epoch_start(self):
            # Lightning sets the epoch on `batch_sampler.sampler`, not on a batch sampler itself: the hook a custom
            # batch sampler needs, so that both loops see the same batch order in every epoch
            self.trainer.train_dataloader.batch_sampler.set_epoch(self.current_epoch)

        def training_step(self, batch, _):
            loss = F.cross_entropy(self.model(batch["x"]).flatten(0, 1), batch["y"].flatten())
            self.log("train/loss", loss)
            return loss

        def validation_step(self, batch, _):
            self.log("val/loss", F.cross_entropy(self.model(batch["x"]).flatten(0, 1), batch["y"].flatten()))

        def configure_optimizers(self):
            return torch.optim.Adam(self.model.parameters(), lr=self.lr)

    seed_everything(int(cfg.seed), False)
    data = instantiate(cfg.dataset)
    data.setup()
    with open_dict(cfg):
        cfg.data_info = data.info
    module = Module(instantiate(cfg.model), float(cfg.optim.lr))
    run_dir = Path(tempfile.mkdtemp(dir=workdir))
    trainer = L.Trainer(max_epochs=int(cfg.trainer.max_epochs), accelerator="cpu", devices=1,
                        logger=LightningCSV(run_dir), log_every_n_steps=10, default_root_dir=run_dir,
                        enable_model_summary=False, num_sanity_val_steps=0)
    with timed_steps() as stamps, open(os.devnull, "w") as null, contextlib.redirect_stderr(null), \
            contextlib.redirect_stdout(null):  # its progress bar drawn, off-screen (rich's goes to stdout)
        trainer.fit(module, data.loader("train", train=True), data.loader("val"))
    return stamps, final_loss(module.model, data)


def run_plain(cfg) -> tuple[list[float], float]:
    from hydra.utils import instantiate
    from omegaconf import open_dict

    from trainer.run import seed_everything

    seed_everything(int(cfg.seed), False)
    data = instantiate(cfg.dataset)
    data.setup()
    with open_dict(cfg):
        cfg.data_info = data.info
    model = instantiate(cfg.model)
    optimizer = torch.optim.Adam(model.parameters(), lr=float(cfg.optim.lr))
    loader = data.loader("train", train=True)
    model.train()
    with timed_steps() as stamps:
        for epoch in range(int(cfg.trainer.max_epochs)):
            loader.batch_sampler.set_epoch(epoch)
            for batch in loader:
                out = model(batch["x"])
                loss = F.cross_entropy(out.flatten(0, 1), batch["y"].flatten())
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
    return stamps, final_loss(model, data)


@torch.no_grad()
def final_loss(model: torch.nn.Module, data) -> float:
    model.eval()
    loader = data.loader("train", train=True)
    loader.batch_sampler.set_epoch(0)
    batch = next(iter(loader))
    out = model(batch["x"])
    return float(F.cross_entropy(out.flatten(0, 1), batch["y"].flatten()))


def step_times(stamps: list[float]) -> list[float]:
    return [b - a for a, b in zip(stamps, stamps[1:])]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--train-size", type=int, default=3200)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    cfg = compose([
        "task=captcha", "task_name=captcha", "model=captcha_crnn", "optim=adam", "optim.lr=1e-3", "optim.weight_decay=0", "sched=none",
        f"paths.cache_dir={ROOT / 'data' / 'cache'}", "dataset.width=96", "dataset.height=36",
        f"dataset.train_size={args.train_size}", "dataset.val_size=256", "dataset.test_size=0",
        f"dataset.batch_size={args.batch_size}", f"trainer.max_epochs={args.epochs}", "trainer.log_every_n_steps=10",
        "trainer.progress=true", "trainer.progress_refresh_s=0.5", "trainer.test_after_fit=false",
        "trainer.gradient_clip_val=null",
    ])
    run_plain(cfg)  # warm-up: renders the cache, loads kernels

    ours, plain, light, losses, paired, paired_light = [], [], [], [], [], []
    for r in range(args.rounds):
        s_ours, l_ours = run_ours(cfg, workdir)
        s_plain, l_plain = run_plain(cfg)
        s_light, l_light = run_lightning(cfg, workdir)
        m_o, m_p, m_l = (statistics.median(step_times(s)) for s in (s_ours, s_plain, s_light))
        ours += step_times(s_ours)
        plain += step_times(s_plain)
        light += step_times(s_light)
        paired.append(m_o / m_p)
        paired_light.append(m_l / m_p)
        losses.append((l_ours, l_plain, l_light))
        print(f"round {r + 1}: ours {m_o * 1e3:.2f} ms/step, plain {m_p * 1e3:.2f}, Lightning {m_l * 1e3:.2f}; "
              f"ratios to plain: ours {m_o / m_p:.3f}, Lightning {m_l / m_p:.3f}; final loss ours {l_ours:.6f} "
              f"plain {l_plain:.6f} Lightning {l_light:.6f}", flush=True)

    m_ours, m_plain, m_light = statistics.median(ours), statistics.median(plain), statistics.median(light)
    print(f"\nmedian step time over {len(ours)} steps each: ours {m_ours * 1e3:.2f} ms, plain {m_plain * 1e3:.2f} ms, "
          f"Lightning {m_light * 1e3:.2f} ms (pooled ratios to plain: ours {m_ours / m_plain:.3f}, Lightning "
          f"{m_light / m_plain:.3f})")
    print(f"ratio ours/plain, median of the {len(paired)} back-to-back rounds = {statistics.median(paired):.3f}  "
          f"(target <= 1.03)")
    print(f"ratio Lightning/plain, median of the {len(paired_light)} rounds = {statistics.median(paired_light):.3f}")

    # The loop's own cost per step, where it is not hidden by the model: a 1-filter CNN on 16x6 images.
    tiny = compose(["task=captcha", "task_name=captcha", "model=captcha_cnn", "model.blocks=1", "model.filters=1",
                    "optim=adam", "optim.weight_decay=0", "sched=none", f"paths.cache_dir={ROOT / 'data' / 'cache'}",
                    "dataset.width=16", "dataset.height=6", "dataset.train_size=8000", "dataset.val_size=64",
                    "dataset.test_size=0", "dataset.batch_size=8", "trainer.max_epochs=1",
                    "trainer.log_every_n_steps=10", "trainer.progress=true", "trainer.test_after_fit=false",
                    "trainer.gradient_clip_val=null"])
    run_plain(tiny)
    extra, extra_light = [], []
    for _ in range(args.rounds):
        t_o = statistics.median(step_times(run_ours(tiny, workdir)[0]))
        t_p = statistics.median(step_times(run_plain(tiny)[0]))
        t_l = statistics.median(step_times(run_lightning(tiny, workdir)[0]))
        extra.append(t_o - t_p)
        extra_light.append(t_l - t_p)
    for who, values in (("ours", extra), ("Lightning", extra_light)):
        overhead = statistics.median(values)
        print(f"loop overhead per step, {who} (tiny model, median of {len(values)} rounds): {overhead * 1e6:.0f} us "
              f"= {overhead / m_plain * 100:.2f}% of a {m_plain * 1e3:.0f} ms step above")
    agree = all(abs(a - b) <= 1e-4 * max(1.0, abs(b)) and abs(c - b) <= 1e-4 * max(1.0, abs(b)) for a, b, c in losses)
    print(f"final losses agree: {agree}  {losses[0]}")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
