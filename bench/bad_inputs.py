"""Bad inputs, tried as a user would type them: each should end with one `error:` line and exit code 2, before any
long work, and never with an internal exception (exit 1). Prints the Markdown table of docs/reliability.md.

    python bench/bad_inputs.py [--only SUBSTRING]

Each case runs the CLI in a subprocess, in a scratch folder, on tiny captcha settings (a few seconds each).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TINY = ["task=captcha", "model=captcha_cnn", "model.blocks=2", "optim=adam", "sched=none", "dataset.width=64",
        "dataset.height=24", "dataset.train_size=64", "dataset.val_size=32", "dataset.test_size=32",
        "dataset.batch_size=32", "dataset.render_workers=1", "trainer.max_epochs=1", "trainer.progress=false"]


def files(scratch: Path) -> dict[str, Path]:
    """Broken files of the kinds a user might hand over."""
    out = {"empty.pt": scratch / "empty.pt", "garbage.pt": scratch / "garbage.pt", "bare.pt": scratch / "bare.pt",
           "pickle.pt": scratch / "pickle.pt", "truncated.pt": scratch / "truncated.pt", "folder": scratch / "folder"}
    out["empty.pt"].touch()
    out["garbage.pt"].write_bytes(b"\x00 not a checkpoint")
    torch.save({"conv.weight": torch.zeros(1)}, out["bare.pt"])
    torch.save({"net": _Evil()}, out["pickle.pt"])
    torch.save({"net": {"w": torch.zeros(1000)}, "config": "a: 1"}, out["truncated.pt"])
    out["truncated.pt"].write_bytes(out["truncated.pt"].read_bytes()[:200])
    out["folder"].mkdir()
    forged = scratch / "forged.pt"
    torch.save({"net": {}, "config": "task_name: captcha\nmodel: {_target_: builtins.open, _args_: [victim.txt, w]}\n"},
               forged)
    out["forged.pt"] = forged
    return out


class _Evil:
    def __reduce__(self):
        return (os.system, ("true",))


def cases(f: dict[str, Path]) -> list[tuple[str, list[str]]]:
    return [
        ("unknown task", ["task=nosuchtask"]),
        ("unknown key", ["optim.lrr=1"]),
        ("unknown group option", ["model=nosuchmodel"]),
        ("a word for a number (trainer)", ["trainer.max_epochs=lots"]),
        ("a word for a number (optimiser)", ["optim.lr=abc"]),
        ("a fraction for a whole number", ["dataset.width=1.5"]),
        ("zero image height", ["dataset.height=0"]),
        ("zero training samples", ["dataset.train_size=0"]),
        ("label smoothing above 1", ["task=fashion_mnist", "head.label_smoothing=2"]),
        ("negative model depth", ["model.blocks=-1"]),
        ("typo in a later stage's value", ["task=dog_finetune", "stages.unfrozen.dataset.augment=hevy"]),
        ("typo in a later stage's budget", ["task=dog_finetune", "stages.light.trainer.max_epochs=0"]),
        ("unknown precision", ["trainer.precision=fp64"]),
        ("unknown mode", ["mode=fit"]),
        ("fp16 without CUDA", ["trainer.precision=fp16"]),
        ("negative clipping", ["trainer.gradient_clip_val=-1"]),
        ("limit neither count nor fraction", ["trainer.limit_train_batches=1.5"]),
        ("bad time budget", ["trainer.max_time=soon"]),
        ("EMA decay of 1", ["trainer.ema_decay=1"]),
        ("divergence factor below 1", ["trainer.divergence_factor=0.5"]),
        ("batch larger than the data", ["dataset.batch_size=128"]),
        ("null group choice", ["debug=null"]),
        ("seed not a number", ["seed=abc"]),
        ("unparsable override", ["optim.lr=[1,"]),
        ("added key the model does not take", ["+model.nonsense=1"]),
        ("output folder that cannot exist", ["paths.output_dir=/proc/version/outputs"]),
        ("cache folder that cannot exist", ["paths.cache_dir=/proc/version/cache"]),
        ("resume of no run", ["resume=/nonexistent/run"]),
        ("eval without a checkpoint", ["mode=eval"]),
        ("eval of a missing checkpoint", ["mode=eval", "ckpt=/nonexistent.pt"]),
        ("eval of an empty file", ["mode=eval", f"ckpt={f['empty.pt']}"]),
        ("eval of a garbage file", ["mode=eval", f"ckpt={f['garbage.pt']}"]),
        ("eval of a truncated file", ["mode=eval", f"ckpt={f['truncated.pt']}"]),
        ("eval of a bare state_dict", ["mode=eval", f"ckpt={f['bare.pt']}"]),
        ("eval of a pickle that runs code", ["mode=eval", f"ckpt={f['pickle.pt']}"]),
        ("eval of a forged config (_target_)", ["mode=eval", f"ckpt={f['forged.pt']}"]),
        ("eval of a folder without checkpoints", ["mode=eval", f"ckpt={f['folder']}"]),
        ("eval on a split that does not exist", ["mode=eval", f"ckpt={f['good']}", "split=nope"]),
        ("eval of a run under another task", ["task=fashion_mnist", "mode=eval", f"ckpt={f['good']}"]),
        ("predict without input", ["mode=predict", f"ckpt={f['good']}"]),
        ("predict on a missing folder", ["mode=predict", f"ckpt={f['good']}", "input=/nonexistent"]),
        ("predict an image task from standard input", ["mode=predict", f"ckpt={f['good']}", "input=-"]),
        ("resume of a finished run", [f"resume={f['good']}"]),
        ("predict into an unwritable place", ["mode=predict", "ckpt=/nonexistent.pt", "input=x.png", "output=/proc"]),
        ("a missing captcha folder", ["task=captcha", "dataset=captcha_folder", "dataset.root=/nonexistent/captchas"]),
        ("Fashion-MNIST files missing", ["task=fashion_mnist", "dataset.root=/nonexistent"]),
        ("segmentation corpus missing", ["task=segmentation", "dataset.path=/nonexistent.txt"]),
        ("image folder missing", ["task=dog_finetune", "dataset.root=/nonexistent"]),
        ("trainer.test_model key the model lacks", ["trainer.test_model={nope: 1}"]),
        ("also_evaluate a missing split", ["trainer.also_evaluate=[nope]"]),
        ("monitor a metric that is not logged", ["trainer.monitor=val/nope"]),
        ("diverging optimiser (Adam at 1e8)", ["optim.lr=1e8", "trainer.max_epochs=6"]),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="bad-inputs-"))
    f = files(scratch)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("TRAINER_RUN_STAMP", None)
    good = scratch / "good"  # a real checkpoint, for the cases that need one
    subprocess.run([sys.executable, "-m", "trainer", *TINY, f"paths.output_dir={good}",
                    f"paths.data_dir={scratch / 'data'}"], cwd=scratch, env=env, check=True, capture_output=True)
    f["good"] = next((good / "captcha").iterdir())
    rows, clear = [], 0
    for what, overrides in cases(f):
        if args.only not in what:
            continue
        tiny = TINY if not any(o.startswith(("task=", "dataset=")) for o in overrides) else TINY[:1] + TINY[-2:]
        command = [sys.executable, "-m", "trainer", *tiny, f"paths.output_dir={scratch / 'out'}",
                   f"paths.data_dir={scratch / 'data'}", *overrides]
        t0 = time.monotonic()
        proc = subprocess.run(command, cwd=scratch, env=env, capture_output=True, text=True, timeout=600)
        seconds = time.monotonic() - t0
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        ok = proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr
        clear += ok
        shown = errors[0] if errors else (proc.stderr.strip().splitlines() or ["(nothing)"])[-1]
        shown = shown.replace(str(scratch), "…").replace("|", "\\|")
        rows.append(f"| {what} | `{' '.join(overrides).replace(str(scratch), '…')}` | {proc.returncode} | "
                    f"{seconds:.0f} s | {'yes' if ok else '**no**'} | {shown[:300]} |")
    print("| input | overrides (on tiny captcha settings) | exit | time | one line, exit 2 | what it prints |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))
    print(f"\n{clear} of {len(rows)} clear")
    shutil.rmtree(scratch, ignore_errors=True)
    return 0 if clear == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
