"""Is captcha data the bottleneck? Rendering on the fly vs the memory-mapped cache vs the model's training speed.

In one invocation, on the same machine state:
  1. the training step rate of the captcha model alone (images/s, synthetic tensors);
  2. batches served from the render cache (images/s);
  3. captchas rendered on the fly by DataLoader workers (images/s, 1 and 2 workers);
  4. training with each data source end to end (images/s).

    python bench/captcha_data.py [--batches 20] [--batch-size 128]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F

from trainer.datasets.captcha import CaptchaData
from trainer.models.captcha_crnn import CaptchaCRNN


def rate(fn, batches: int, batch_size: int, repeats: int = 3) -> float:
    """Median images/s over `repeats` timings of `batches` calls of fn."""
    results = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(batches):
            fn()
        results.append(batches * batch_size / (time.perf_counter() - t0))
    return statistics.median(results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    bs, nb = args.batch_size, args.batches
    n = bs * nb
    cache = tempfile.mkdtemp(prefix="bench-captcha-")

    torch.manual_seed(0)
    model = CaptchaCRNN()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = torch.rand(bs, 1, 36, 96), torch.randint(0, 26, (bs, 4))

    def train_step(xb=x, yb=y):
        loss = F.cross_entropy(model(xb).flatten(0, 1), yb.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    train_step()
    model_rate = rate(train_step, nb // 2, bs)
    print(f"model training step alone:         {model_rate:8.0f} images/s")

    cached = CaptchaData(width=96, height=36, train_size=n, val_size=0, test_size=0, cache_dir=cache,
                         batch_size=bs, render_workers=2)
    t0 = time.perf_counter()
    cached.setup()
    print(f"render {n} into the cache (2 procs): {n / (time.perf_counter() - t0):8.0f} images/s (once, then reused)")
    loader = cached.loader("train", train=True)
    it = iter(loader)
    cache_rate = rate(lambda: next(it), nb // 4, bs)
    print(f"batches from the cache:             {cache_rate:8.0f} images/s")

    for workers in (1, 2):
        live = CaptchaData(width=96, height=36, train_size=n * 4, val_size=0, test_size=0, cache=False,
                           batch_size=bs, num_workers=workers)
        live.setup()
        lit = iter(live.loader("train", train=True))
        next(lit)
        print(f"rendered on the fly, {workers} worker(s):   {rate(lambda: next(lit), nb // 4, bs, 1):8.0f} images/s")

    for name, dm in (("cache", cached), ("on the fly, 2 workers", live)):
        lit = iter(dm.loader("train", train=True))

        def step():
            batch = next(lit)
            train_step(batch["x"], batch["y"])

        step()
        print(f"training end to end, {name:<22} {rate(step, nb // 4, bs, 1):8.0f} images/s")


if __name__ == "__main__":
    main()
