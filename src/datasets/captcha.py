"""Image captchas of 4 letters, case-insensitive (problem 2 of PROBLEMS.md).

Rendered offline by the `captcha` package (BSD; its bundled DroidSansMono font) from random strings of mixed-case
letters; the label is the lower-cased string, 26 classes per position. Rendering is at the package's 160x60;
`width`/`height` resize to the model's input size. Sample i of a split is rendered from the seed
(split seed, i), so the validation and test sets are identical on every machine and run. Rendering costs ~3 ms an
image on one core, more than the training step of a small CNN, so a split is rendered once, in parallel processes,
into a cache file that later runs memory-map (see bench/captcha_data.py for the measurement).

`CaptchaFolder` reads real captcha images instead: a folder of images whose file name (up to an optional "_suffix")
is the label, e.g. `xkcd.png` or `xkcd_0412.jpg`; sub-folders train/, val/, test/ when present, else a seeded split.
"""
from __future__ import annotations

import hashlib
import logging
import multiprocessing as mp
import os
import random
import string
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from trainer.errors import UserError

from .base import ArrayDataset, DataModule, SequentialBatches, image_inputs

log = logging.getLogger("trainer")

ALPHABET = string.ascii_lowercase
SPLIT_SEEDS = {"train": 1_000, "val": 2_000, "test": 3_000}  # fixed: val/test never change with the run's seed
RENDER_VERSION = 1  # bump when rendering changes, to invalidate caches


class _SeededSecrets:
    """Stands in for the `secrets` module inside captcha.image (0.7 draws all its noise from `secrets`, which cannot
    be seeded), so that a captcha is a pure function of its seed."""

    def __init__(self, seed: int):
        self._rng = random.Random(seed)

    def randbelow(self, n: int) -> int:
        return self._rng.randrange(n)

    def randbits(self, k: int) -> int:
        return self._rng.getrandbits(k)

    def choice(self, seq):
        return self._rng.choice(seq)


_generators: dict[tuple[int, int], Any] = {}


def render(seed: int, length: int = 4, width: int = 160, height: int = 60,
           size: tuple[int, int] | None = None) -> tuple[np.ndarray, str]:
    """One captcha rendered at width x height, optionally resized to size=(w, h): (grey uint8 (h, w), label)."""
    import captcha.image as cimg

    rng = random.Random(seed)
    text = "".join(rng.choice(string.ascii_letters) for _ in range(length))
    gen = _generators.get((width, height))
    if gen is None:
        gen = _generators[(width, height)] = cimg.ImageCaptcha(width=width, height=height)
    real = cimg.secrets
    cimg.secrets = _SeededSecrets(seed)
    try:
        image = gen.generate_image(text)
    finally:
        cimg.secrets = real
    image = image.convert("L")
    if size is not None and size != (width, height):
        image = image.resize(size, Image.BILINEAR, reducing_gap=None)
    return np.asarray(image), text.lower()


def encode(label: str) -> np.ndarray:
    return np.array([ALPHABET.index(c) for c in label], dtype=np.int64)


def _render_chunk(args: tuple) -> tuple[np.ndarray, np.ndarray]:
    split_seed, start, stop, length, width, height, render_size = args
    images = np.empty((stop - start, height, width), dtype=np.uint8)
    labels = np.empty((stop - start, length), dtype=np.int64)
    for j, i in enumerate(range(start, stop)):
        image, text = render(_seed(split_seed, i), length, *render_size, size=(width, height))
        images[j], labels[j] = image, encode(text)
    return images, labels


def _seed(split_seed: int, index: int) -> int:
    return split_seed * 10_000_019 + index


def render_split(split_seed: int, n: int, length: int, width: int, height: int, render_size: tuple[int, int],
                 workers: int) -> dict[str, np.ndarray]:
    chunk = 500
    jobs = [(split_seed, s, min(s + chunk, n), length, width, height, render_size) for s in range(0, n, chunk)]
    t0 = time.monotonic()
    if workers > 1 and len(jobs) > 1:
        with mp.get_context("fork").Pool(workers) as pool:
            parts = pool.map(_render_chunk, jobs, chunksize=1)
    else:
        parts = [_render_chunk(j) for j in jobs]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    log.info(f"rendered {n:,} captchas in {time.monotonic() - t0:.0f}s with {workers} process(es)")
    return {"x": images[:, None], "y": labels}


def cached_split(cache_dir: Path, split_seed: int, n: int, length: int, width: int, height: int,
                 render_size: tuple[int, int], workers: int) -> dict[str, np.ndarray]:
    """Render once and memory-map afterwards. The file name carries every parameter that changes the pixels."""
    key = f"v{RENDER_VERSION}-seed{split_seed}-n{n}-len{length}-{width}x{height}-from{render_size[0]}x{render_size[1]}"
    digest = hashlib.sha1(key.encode()).hexdigest()[:8]
    base = Path(cache_dir) / "captcha" / f"{key}-{digest}"
    files = {name: base.with_name(base.name + f".{name}.npy") for name in ("x", "y")}
    if all(f.is_file() for f in files.values()):
        try:
            arrays = {name: np.load(f, mmap_mode="r") for name, f in files.items()}
            if len(arrays["x"]) == n and len(arrays["y"]) == n:
                return arrays
        except (ValueError, OSError):
            pass
        log.warning(f"captcha cache {base} is unreadable; rendering it again")
    try:  # before minutes of rendering, not after
        base.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the captcha cache in {base.parent}: {e.strerror}; set paths.cache_dir to a "
                        "writable folder, or dataset.cache=false to render on the fly") from None
    log.info(f"rendering {n:,} captchas (seed {split_seed}) into {base.parent}; later runs reuse them")
    arrays = render_split(split_seed, n, length, width, height, render_size, workers)
    for name, f in files.items():
        tmp = f.with_name(f".{f.name}.tmp{os.getpid()}")
        with open(tmp, "wb") as fh:
            np.save(fh, arrays[name])
        os.replace(tmp, f)
    return {name: np.load(f, mmap_mode="r") for name, f in files.items()}


def _to_float(batch: dict[str, torch.Tensor], indices: np.ndarray, epoch: int) -> dict[str, torch.Tensor]:
    batch["x"] = batch["x"].float().div_(255.0)
    return batch


class _OnTheFly(torch.utils.data.Dataset):
    """Renders in DataLoader workers instead of caching; with fresh_each_epoch, every epoch sees new captchas."""

    def __init__(self, split_seed: int, n: int, length: int, width: int, height: int, render_size: tuple[int, int],
                 fresh_each_epoch: bool):
        self.split_seed, self.n, self.length, self.width, self.height = split_seed, n, length, width, height
        self.render_size, self.fresh = render_size, fresh_each_epoch

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image, text = render(_seed(self.split_seed, index), self.length, *self.render_size, size=(self.width, self.height))
        return {"x": torch.tensor(image)[None].float().div_(255.0), "y": torch.from_numpy(encode(text))}


class CaptchaData(DataModule):
    """Rendered captchas: train/val/test splits of fixed seeds (val and test never change with the run's seed)."""
    machine_keys = DataModule.machine_keys | {"render_workers", "cache_dir", "cache"}

    def __init__(
        self,
        length: int = 4,
        width: int = 160,
        height: int = 60,
        render_width: int = 160,
        render_height: int = 60,
        train_size: int = 100_000,
        val_size: int = 2_000,
        test_size: int = 10_000,
        cache: bool = True,
        cache_dir: str = "data/cache",
        fresh_each_epoch: bool = False,
        render_workers: int = 0,
        **loader: Any,
    ):
        super().__init__(**loader)
        self.length, self.width, self.height = length, width, height
        self.render_size = (render_width, render_height)
        self.sizes = {"train": train_size, "val": val_size, "test": test_size}
        self.cache, self.cache_dir, self.fresh = cache, Path(cache_dir), fresh_each_epoch
        self.render_workers = render_workers or max(os.cpu_count() or 1, 1)

    @property
    def info(self) -> dict[str, Any]:
        return {"num_classes": len(ALPHABET), "length": self.length, "in_channels": 1,
                "height": self.height, "width": self.width, "alphabet": ALPHABET}

    def setup(self, stage: str = "fit") -> None:
        if stage == "predict":  # the alphabet and image size are config: nothing to render
            return
        for split, n in self.sizes.items():
            if n <= 0:
                continue
            seed = SPLIT_SEEDS[split]
            # mode=eval scores one split, normally test: the training split is rendered only if it is the one asked for
            lazy_train = split == "train" and (self.fresh or stage == "eval")
            if self.cache and not lazy_train:
                arrays = cached_split(self.cache_dir, seed, n, self.length, self.width, self.height,
                                      self.render_size, self.render_workers)
                self.splits[split] = ArrayDataset(arrays, transform=_to_float)
            else:
                self.splits[split] = _OnTheFly(seed, n, self.length, self.width, self.height, self.render_size,
                                               fresh_each_epoch=split == "train" and self.fresh)

    def plan(self, split: str, train: bool):
        if train and self.fresh:  # an endless stream: epoch e renders indices [e*n, (e+1)*n)
            return SequentialBatches(self.sizes["train"], self.batch_size, drop_last=True, fresh_each_epoch=True)
        return super().plan(split, train)

    def predict_dataset(self, source: str):
        return read_folder(Path(source), self.length, self.width, self.height, require_labels=False)[1]

    def write_predictions(self, dataset, predictions, out) -> None:
        for path, text in zip(dataset.paths, predictions):
            out.write(f"{path}\t{text}\n")


class _ImageFiles(torch.utils.data.Dataset):
    def __init__(self, paths: list[Path], labels: list[str] | None, width: int, height: int, length: int):
        self.paths, self.labels, self.width, self.height, self.length = paths, labels, width, height, length

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.paths[index]
        try:
            with Image.open(path) as im:
                image = im.convert("L").resize((self.width, self.height), Image.BILINEAR)
        except (UnidentifiedImageError, OSError) as e:
            raise UserError(f"cannot decode image {path}: {e}; remove or replace the file") from None
        sample = {"x": torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)[None], "index": index}
        if self.labels is not None:
            sample["y"] = torch.from_numpy(encode(self.labels[index]))
        return sample


def read_folder(folder: Path, length: int, width: int, height: int, require_labels: bool = True):
    files = image_inputs(folder, f"captcha folder not found: {folder}")
    labels = None
    if require_labels:
        labels = []
        for p in files:
            label = p.stem.split("_")[0].lower()
            if len(label) != length or any(c not in ALPHABET for c in label):
                raise UserError(f"{p}: the file name must be the {length}-letter label (e.g. abcd.png or "
                                f"abcd_17.png), got '{p.stem}'")
            labels.append(label)
    return files, _ImageFiles(files, labels, width, height, length)


class CaptchaFolder(CaptchaData):
    """Real captcha images from a folder; labels from file names. Sub-folders train/val/test, or a seeded split."""

    def __init__(self, root: str, val_fraction: float = 0.1, test_fraction: float = 0.1, length: int = 4,
                 width: int = 160, height: int = 60, **loader: Any):
        super().__init__(length=length, width=width, height=height, **loader)
        self.root, self.val_fraction, self.test_fraction = Path(root), val_fraction, test_fraction

    def setup(self, stage: str = "fit") -> None:
        if stage == "predict":
            return
        if not self.root.is_dir():
            raise UserError(f"captcha folder not found: {self.root} (set dataset.root)")
        subdirs = [s for s in ("train", "val", "test") if (self.root / s).is_dir()]
        if "train" in subdirs:
            for split in subdirs:
                self.splits[split] = read_folder(self.root / split, self.length, self.width, self.height)[1]
            return
        files, full = read_folder(self.root, self.length, self.width, self.height)
        order = np.random.default_rng(self.seed).permutation(len(files))
        n_val, n_test = int(len(files) * self.val_fraction), int(len(files) * self.test_fraction)
        parts = {"val": order[:n_val], "test": order[n_val:n_val + n_test], "train": order[n_val + n_test:]}
        for split, idx in parts.items():
            if len(idx):
                self.splits[split] = _ImageFiles([files[i] for i in idx], [full.labels[i] for i in idx],
                                                 self.width, self.height, self.length)
