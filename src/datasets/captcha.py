"""Image captchas of 4 letters, case-insensitive (problem 2 of docs/problems.md).

Rendered offline by the `captcha` package (BSD) from random strings of mixed-case letters; the label is the lower-cased
string, 26 classes per position. The package draws in its bundled DroidSansMono unless given fonts; a reader trained
on one typeface reads little else (40% whole-captcha on DejaVu Sans for a model at 98.6% on DroidSansMono), so the
training split is drawn from a pool of fonts (`fonts`: files, folders, `captcha` for the package's font, `matplotlib`
for the text fonts matplotlib ships), one font per captcha. Fonts named in `held_out_fonts` are taken out of the pool
for training and render the `val_unseen`/`test_unseen` splits alone, which measure reading fonts never trained on;
`val`/`test` stay in `test_fonts` (the package's font: the problem's own test set). Rendering is at the package's 160x60;
`width`/`height` resize to the model's input size. Sample i of a split is rendered from the seed
(split seed, i), so the validation and test sets are identical on every machine and run. Rendering costs ~3 ms an
image on one core, more than the training step of a small CNN, so a split is rendered once, in parallel processes,
into a cache file that later runs memory-map (see bench/captcha_data.py for the measurement).

`CaptchaFolder` reads real captcha images instead: a folder of images whose file name (up to an optional "_suffix")
is the label, e.g. `xkcd.png` or `xkcd_0412.jpg`; sub-folders train/, val/, test/ when present, else a seeded split.
"""
from __future__ import annotations

import fcntl
import functools
import hashlib
import logging
import multiprocessing as mp
import os
import random
import shutil
import signal
import string
import time
from pathlib import Path
from collections.abc import Sequence
from typing import Annotated, Any

import numpy as np
import torch
from annotated_types import Ge, Interval
from PIL import Image, ImageFilter, UnidentifiedImageError

from trainer.errors import UserError
from trainer.progress import Activity
from trainer.schema import Check

from . import fonts as fontpool
from . import image_augment as aug
from .base import ArrayDataset, DataModule, SequentialBatches, image_inputs, per_sample_uniform
from .fonts import fonts_problem

log = logging.getLogger("trainer")

ALPHABET = string.ascii_lowercase
SPLIT_SEEDS = {"train": 1_000, "val": 2_000, "test": 3_000,  # fixed: val/test never change with the run's seed
               "val_unseen": 4_000, "test_unseen": 5_000}
UNSEEN_SPLITS = ("val_unseen", "test_unseen")
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


_generators: dict[tuple[int, int, str | None], Any] = {}


def render(seed: int, length: int = 4, width: int = 160, height: int = 60,
           size: tuple[int, int] | None = None, alphabet: str = ALPHABET,
           fonts: tuple[str, ...] = (), stroke: float = 0.0) -> tuple[np.ndarray, str]:
    """One captcha rendered at width x height, optionally resized to size=(w, h): (grey uint8 (h, w), label).
    Its characters are drawn from `alphabet` and the upper case of its letters; the label is lower case. It is drawn
    in one of `fonts` (font files; none: the package's own), chosen by the seed after the text, so a one-font list
    draws the same text as the package's default. With probability `stroke` its strokes are a pixel thicker or
    thinner (a 3x3 min or max filter at render size: the weights of a font family, bold to light)."""
    import captcha.image as cimg

    rng = random.Random(seed)
    text = _draw_text(rng, length, alphabet)
    font = _pick(rng, fonts)
    gen = _generators.get((width, height, font))
    if gen is None:
        gen = _generators[(width, height, font)] = cimg.ImageCaptcha(width=width, height=height,
                                                                     fonts=[font] if font else None)
    real = cimg.secrets
    cimg.secrets = _SeededSecrets(seed)
    try:
        image = gen.generate_image(text)
    finally:
        cimg.secrets = real
    image = image.convert("L")
    if stroke > 0 and rng.random() < stroke:  # (drawn after the font: stroke=0 leaves every render as it was)
        image = image.filter(ImageFilter.MinFilter(3) if rng.random() < 0.5 else ImageFilter.MaxFilter(3))
    if size is not None and size != (width, height):
        image = image.resize(size, Image.BILINEAR, reducing_gap=None)
    return np.asarray(image), text.lower()


def _draw_text(rng: random.Random, length: int, alphabet: str) -> str:
    return "".join(rng.choice(drawn_from(alphabet)) for _ in range(length))


def shown_text(seed: int, length: int = 4, alphabet: str = ALPHABET) -> str:
    """The mixed-case text captcha `seed` shows (its label is this, lower-cased)."""
    return _draw_text(random.Random(seed), length, alphabet)


def _pick(rng: random.Random, fonts: tuple[str, ...]) -> str | None:
    return (fonts[rng.randrange(len(fonts))] if len(fonts) > 1 else fonts[0]) if fonts else None


def font_of(seed: int, fonts: tuple[str, ...], length: int = 4, alphabet: str = ALPHABET) -> str | None:
    """The font `render` draws captcha `seed` in."""
    rng = random.Random(seed)
    _draw_text(rng, length, alphabet)
    return _pick(rng, fonts)


def drawn_from(alphabet: str) -> str:
    """The characters a captcha is drawn from: the alphabet, then the upper case of its letters (for the default
    alphabet, string.ascii_letters: the renders stay as they were before the alphabet was configurable)."""
    return alphabet + "".join(c.upper() for c in alphabet if c.upper() != c)


def encode(label: str, alphabet: str = ALPHABET) -> np.ndarray:
    return np.array([alphabet.index(c) for c in label], dtype=np.int64)


def check_alphabet(alphabet: str) -> str:
    alphabet = str(alphabet)
    if len(alphabet) < 2 or len(set(alphabet)) != len(alphabet) or alphabet != alphabet.lower():
        raise UserError(f"dataset.alphabet='{alphabet}' must list two or more lower-case characters, each once "
                        "(labels are case-insensitive), e.g. abcdefghijklmnopqrstuvwxyz0123456789")
    return alphabet


def _render_chunk(args: tuple) -> tuple[int, int, np.ndarray, np.ndarray]:
    split_seed, start, stop, length, width, height, render_size, alphabet, fonts, stroke = args
    images = np.empty((stop - start, height, width), dtype=np.uint8)
    labels = np.empty((stop - start, length), dtype=np.int64)
    for j, i in enumerate(range(start, stop)):
        image, text = render(_seed(split_seed, i), length, *render_size, size=(width, height), alphabet=alphabet,
                             fonts=fonts, stroke=stroke)
        images[j], labels[j] = image, encode(text, alphabet)
    return start, stop, images, labels


def _seed(split_seed: int, index: int) -> int:
    return split_seed * 10_000_019 + index


def _quiet_worker() -> None:
    """A render process leaves Ctrl-C to its parent (which stops the pool and keeps what was rendered) and dies
    quietly when the pool is terminated: no traceback per worker."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


#: Samples per render job and per part file of a cache being rendered (a few seconds of one core's work).
CHUNK = 500


def _cache_key(split_seed: int, n: int | str, length: int, width: int, height: int,
               render_size: tuple[int, int], alphabet: str = ALPHABET, fonts: tuple[str, ...] = (),
               stroke: float = 0.0) -> str:
    key = f"v{RENDER_VERSION}-seed{split_seed}-n{n}-len{length}-{width}x{height}-from{render_size[0]}x{render_size[1]}"
    if alphabet != ALPHABET:  # (the default's caches keep the names they had)
        key += f"-abc{hashlib.sha1(alphabet.encode()).hexdigest()[:6]}"
    if fonts and [Path(f) for f in fonts] != fontpool.named_fonts("captcha"):  # (the package's own font: as before)
        key += f"-fonts{fontpool.digest([Path(f) for f in fonts])}"
    if stroke:
        key += f"-stroke{stroke:g}"
    return key


def _cache_files(cache_dir: Path, key: str) -> dict[str, Path]:
    digest = hashlib.sha1(key.encode()).hexdigest()[:8]
    base = Path(cache_dir) / "captcha" / f"{key}-{digest}"
    return {name: base.with_name(base.name + f".{name}.npy") for name in ("x", "y")}


def _load(files: dict[str, Path], n: int) -> dict[str, np.ndarray] | None:
    """The first `n` samples of a finished cache (memory-mapped), or None when it is not there or unreadable."""
    if not all(f.is_file() for f in files.values()):
        return None
    try:
        arrays = {name: np.load(f, mmap_mode="r") for name, f in files.items()}
    except (ValueError, OSError):
        return None
    if len(arrays["x"]) < n or len(arrays["y"]) < n:
        return None
    return {name: a[:n] for name, a in arrays.items()}


def _larger_cache(cache_dir: Path, split_seed: int, n: int, length: int, width: int, height: int,
                  render_size: tuple[int, int], alphabet: str = ALPHABET,
                  fonts: tuple[str, ...] = (), stroke: float = 0.0) -> dict[str, np.ndarray] | None:
    """A finished cache of the same captchas with more samples: sample i is a pure function of (seed, i), so the
    first n of a larger split are this split (a debug run after a full one renders nothing)."""
    pattern = _cache_key(split_seed, "*", length, width, height, render_size, alphabet, fonts, stroke) + "-*.x.npy"
    sizes = []
    for path in (Path(cache_dir) / "captcha").glob(pattern):
        try:
            sizes.append(int(path.name.split("-n", 1)[1].split("-", 1)[0]))
        except ValueError:
            continue
    for size in sorted(s for s in sizes if s > n):
        arrays = _load(_cache_files(cache_dir, _cache_key(split_seed, size, length, width, height, render_size,
                                                          alphabet, fonts, stroke)), n)
        if arrays is not None:
            return arrays
    return None


def cached_split(cache_dir: Path, split_seed: int, n: int, length: int, width: int, height: int,
                 render_size: tuple[int, int], workers: int, what: str = "captchas",
                 alphabet: str = ALPHABET, fonts: tuple[str, ...] = (), stroke: float = 0.0) -> dict[str, np.ndarray]:
    """Render once and memory-map afterwards. The file name carries every parameter that changes the pixels (the
    fonts as a hash of their file names and contents).

    Rendering goes into part files of CHUNK samples under `<cache>.parts/`, one per finished job, with a progress
    display (count, rate, ETA); they are joined into the cache file at the end. A Ctrl-C stops it with one line and
    keeps the parts, so the next run renders only what is missing."""
    fonts = tuple(str(f) for f in fonts)
    key = _cache_key(split_seed, n, length, width, height, render_size, alphabet, fonts, stroke)
    files = _cache_files(cache_dir, key)
    arrays = _load(files, n)
    if arrays is not None:
        return arrays
    if files["x"].is_file():
        log.warning(f"captcha cache {files['x']} is unreadable; rendering it again")
    else:
        arrays = _larger_cache(cache_dir, split_seed, n, length, width, height, render_size, alphabet, fonts,
                               stroke)
        if arrays is not None:
            return arrays
    parts = files["x"].with_name(files["x"].name.removesuffix(".x.npy") + ".parts")
    try:  # before minutes of rendering, not after
        parts.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the captcha cache in {parts.parent}: {e.strerror}; set paths.cache_dir to a "
                        "writable folder, or dataset.cache=false to render on the fly") from None
    # One process renders a cache at a time (torchrun's ranks, parallel sweep jobs): the others wait, then read it.
    with open(parts.with_name(parts.name.removesuffix(".parts") + ".lock"), "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            log.info(f"waiting for another process rendering the same {what} into {parts.parent}")
            fcntl.flock(lock, fcntl.LOCK_EX)
        arrays = _load(files, n)
        if arrays is not None:  # it was that process's to render
            return arrays
        parts.mkdir(parents=True, exist_ok=True)
        return _render_and_join(parts, files, split_seed, n, length, width, height, render_size, workers, what,
                                alphabet, fonts, stroke)


def _render_and_join(parts: Path, files: dict[str, Path], split_seed: int, n: int, length: int, width: int,
                     height: int, render_size: tuple[int, int], workers: int, what: str,
                     alphabet: str, fonts: tuple[str, ...] = (), stroke: float = 0.0) -> dict[str, np.ndarray]:
    chunks = [(s, min(s + CHUNK, n)) for s in range(0, n, CHUNK)]
    todo = [(a, b) for a, b in chunks if not _part(parts, a, b).is_file()]
    kept = n - sum(b - a for a, b in todo)
    workers = min(workers, len(todo)) if workers > 1 and len(todo) > 1 else 1
    if todo:
        log.info(f"rendering {n - kept:,} {what} (seed {split_seed}) into {parts.parent} with {workers} process(es)"
                 + (f"; {kept:,} were rendered before" if kept else "") + "; later runs reuse them")
        _render_parts(parts, todo, (split_seed, length, width, height, render_size, alphabet, fonts, stroke), workers,
                      n, kept, what)
    _join_parts(parts, chunks, files, n, length, height, width)
    return _load(files, n)


def _part(parts: Path, start: int, stop: int) -> Path:
    return parts / f"{start:09d}-{stop:09d}.npz"


def _render_parts(parts: Path, todo: list[tuple[int, int]], spec: tuple, workers: int, n: int, kept: int,
                  what: str) -> None:
    jobs = [(*spec[:1], a, b, *spec[1:]) for a, b in todo]
    t0 = time.monotonic()
    with Activity(f"rendering {what}", n, unit=what.split()[-1], start=kept) as shown:
        try:
            if workers > 1:
                with mp.get_context("fork").Pool(workers, initializer=_quiet_worker) as pool:
                    for result in pool.imap_unordered(_render_chunk, jobs, chunksize=1):
                        _write_part(parts, *result)
                        shown.advance(result[1] - result[0])
            else:
                for job in jobs:
                    result = _render_chunk(job)
                    _write_part(parts, *result)
                    shown.advance(result[1] - result[0])
        except KeyboardInterrupt:
            have = sum(b - a for a, b in (_span(p) for p in parts.glob("*.npz")))
            raise KeyboardInterrupt(f"rendering stopped; the {have:,} of {n:,} {what} rendered so far are kept in "
                                    f"{parts} and the next run continues from there") from None
    done = sum(b - a for a, b in todo)
    log.info(f"rendered {done:,} {what} in {time.monotonic() - t0:.0f}s "
             f"({done / max(time.monotonic() - t0, 1e-9):,.0f}/s, {workers} process(es))")


def _span(path: Path) -> tuple[int, int]:
    a, b = path.stem.split("-")
    return int(a), int(b)


def _write_part(parts: Path, start: int, stop: int, images: np.ndarray, labels: np.ndarray) -> None:
    path = _part(parts, start, stop)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        np.savez(f, x=images, y=labels)
    os.replace(tmp, path)


def _join_parts(parts: Path, chunks: list[tuple[int, int]], files: dict[str, Path], n: int, length: int,
                height: int, width: int) -> None:
    """The part files, in order, into the memory-mappable cache files (written aside, then renamed)."""
    tmp = {name: f.with_name(f".{f.name}.tmp{os.getpid()}") for name, f in files.items()}
    x = np.lib.format.open_memmap(tmp["x"], mode="w+", dtype=np.uint8, shape=(n, 1, height, width))
    y = np.lib.format.open_memmap(tmp["y"], mode="w+", dtype=np.int64, shape=(n, length))
    for a, b in chunks:
        with np.load(_part(parts, a, b)) as part:
            x[a:b, 0], y[a:b] = part["x"], part["y"]
    x.flush(), y.flush()
    del x, y
    for name, f in files.items():
        os.replace(tmp[name], f)
    shutil.rmtree(parts, ignore_errors=True)


def _to_float(batch: dict[str, torch.Tensor], indices: np.ndarray, epoch: int) -> dict[str, torch.Tensor]:
    batch["x"] = batch["x"].float().div_(255.0)
    return batch


def distort(batch: dict[str, torch.Tensor], indices: np.ndarray, epoch: int, seed: int, shear: float = 0.0,
            degrees: float = 0.0, zoom: float = 0.0, warp: float = 0.0) -> dict[str, torch.Tensor]:
    """Training captchas leaning by a horizontal shear of up to +-shear (an upright face read as its italic), turned by
    up to +-degrees, scaled by a factor in [1/(1+zoom), 1+zoom] and warped elastically by up to `warp` pixels (a
    glyph's strokes bent as another typeface bends them); drawn per sample and epoch. The corners they uncover are
    white, like the captchas' light background."""
    u = per_sample_uniform(seed, epoch, indices, aug.DRAWS["affine"] + (aug.DRAWS["warp"] if warp else 0))
    x = batch["x"]
    if shear or degrees or zoom:
        x = aug.affine(x, u[:, :aug.DRAWS["affine"]], degrees=degrees, zoom=(1 / (1 + zoom), 1 + zoom), shear=shear,
                       fill=1.0)
    if warp:
        x = aug.warp(x, u[:, aug.DRAWS["affine"]:], warp, fill=1.0)
    batch["x"] = x
    return batch


def _chain(batch: dict[str, torch.Tensor], indices: np.ndarray, epoch: int,
           transforms: tuple) -> dict[str, torch.Tensor]:
    """Batch transforms one after the other (picklable through functools.partial, unlike a lambda)."""
    for transform in transforms:
        batch = transform(batch, indices, epoch)
    return batch


class _PerSample(torch.utils.data.Dataset):
    """A dataset read one sample at a time, with an optional batch transform (ArrayDataset's signature: batch,
    indices, epoch) applied to each sample as a batch of one, at the epoch the loop sets."""

    transform = None
    epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _transformed(self, sample: dict[str, Any], index: int) -> dict[str, Any]:
        if self.transform is not None:
            sample["x"] = self.transform({"x": sample["x"][None]}, np.array([index]), self.epoch)["x"][0]
        return sample


class _OnTheFly(_PerSample):
    """Renders in DataLoader workers instead of caching; with fresh_each_epoch, every epoch sees new captchas."""

    def __init__(self, split_seed: int, n: int, length: int, width: int, height: int, render_size: tuple[int, int],
                 fresh_each_epoch: bool, alphabet: str = ALPHABET, fonts: tuple[str, ...] = (), stroke: float = 0.0,
                 transform=None):
        self.split_seed, self.n, self.length, self.width, self.height = split_seed, n, length, width, height
        self.render_size, self.fresh, self.alphabet, self.fonts = render_size, fresh_each_epoch, alphabet, fonts
        self.stroke, self.transform = stroke, transform

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image, text = render(_seed(self.split_seed, index), self.length, *self.render_size, size=(self.width, self.height),
                             alphabet=self.alphabet, fonts=self.fonts, stroke=self.stroke)
        return self._transformed({"x": torch.tensor(image)[None].float().div_(255.0),
                                  "y": torch.from_numpy(encode(text, self.alphabet))}, index)


class _Pending(torch.utils.data.Dataset):
    """A split rendered only when a loader reads it (`trainer.also_evaluate`, `mode=eval split=`): a run that never
    scores the unseen-font test split does not spend a minute rendering it, nor `mode=eval` the splits it does not
    score."""

    def __init__(self, n: int, make):
        self.n, self.make = n, make

    def __len__(self) -> int:
        return self.n


class CaptchaData(DataModule):
    """Rendered captchas: train/val/test splits of fixed seeds (val and test never change with the run's seed), and
    val_unseen/test_unseen in the held-out fonts when `held_out_fonts` names some."""
    machine_keys = DataModule.machine_keys | {"render_workers", "cache_dir", "cache"}

    def __init__(
        self,
        length: Annotated[int, Ge(1)] = 4,
        width: Annotated[int, Ge(8)] = 160,
        height: Annotated[int, Ge(8)] = 60,
        render_width: Annotated[int, Ge(8)] = 160,
        render_height: Annotated[int, Ge(8)] = 60,
        train_size: Annotated[int, Ge(1)] = 100_000,
        val_size: Annotated[int, Ge(0)] = 2_000,
        test_size: Annotated[int, Ge(0)] = 10_000,
        cache: bool = True,
        cache_dir: str = "data/cache",
        fresh_each_epoch: bool = False,
        render_workers: int = 0,
        alphabet: str = ALPHABET,
        fonts: Annotated[Sequence[str], Check(fonts_problem)] = ("captcha",),
        held_out_fonts: Sequence[str] = (),
        test_fonts: Annotated[Sequence[str], Check(fonts_problem)] = ("captcha",),
        val_unseen_size: Annotated[int, Ge(0)] = 2_000,
        test_unseen_size: Annotated[int, Ge(0)] = 10_000,
        train_stroke: Annotated[float, Interval(ge=0, le=1)] = 0.0,
        train_shear: Annotated[float, Interval(ge=0, le=1)] = 0.0,
        train_rotation: Annotated[float, Interval(ge=0, le=45)] = 0.0,
        train_zoom: Annotated[float, Interval(ge=0, le=0.5)] = 0.0,
        train_warp: Annotated[float, Interval(ge=0, le=8)] = 0.0,
        test_font_share: Annotated[float, Interval(ge=0, le=0.9)] = 0.0,
        **loader: Any,
    ):
        super().__init__(**loader)
        self.alphabet = check_alphabet(alphabet)
        self.length, self.width, self.height = length, width, height
        self.render_size = (render_width, render_height)
        self.sizes = {"train": train_size, "val": val_size, "test": test_size}
        self.unseen_sizes = {"val_unseen": val_unseen_size, "test_unseen": test_unseen_size}
        self.cache, self.cache_dir, self.fresh = cache, Path(cache_dir), fresh_each_epoch
        self.render_workers = render_workers or max(os.cpu_count() or 1, 1)
        # (resolved in setup, not here: mode=predict builds this from a checkpoint and needs no font)
        self.font_entries = [str(f) for f in fonts]
        self.held_out_names = [str(f) for f in held_out_fonts]
        self.test_font_entries = [str(f) for f in test_fonts]
        self.split_fonts: dict[str, tuple[str, ...]] = {}
        self.pending: dict[str, _Pending] = {}
        self.train_stroke, self.test_font_share = train_stroke, test_font_share
        self.distortion = {"shear": train_shear, "degrees": train_rotation, "zoom": train_zoom, "warp": train_warp}
        if train_warp > aug.warp_limit(height, width):
            raise UserError(f"dataset.train_warp={train_warp} can fold {width}x{height} captchas over themselves: "
                            f"set it to at most {aug.warp_limit(height, width):.1f} pixels at this size")

    def resolve_fonts(self) -> dict[str, tuple[str, ...]]:
        """The font files of each split: train draws from the pool less the held-out fonts, val/test from
        `test_fonts`, val_unseen/test_unseen from the held-out fonts only. Checked before anything is rendered."""
        chars = drawn_from(self.alphabet)
        pool = fontpool.resolve(self.font_entries, chars, "dataset.fonts")
        train, held = fontpool.split_held_out(pool, self.held_out_names, "dataset.held_out_fonts")
        test = fontpool.resolve(self.test_font_entries, chars, "dataset.test_fonts")
        if self.test_font_share:
            train = fontpool.with_share(train, held, test, self.test_font_share, "dataset.test_font_share")
        out = {"train": train, "val": test, "test": test}
        if held:
            out.update(val_unseen=held, test_unseen=held)
        return {split: tuple(str(f) for f in fs) for split, fs in out.items()}

    def limit_samples(self, limits: dict[str, int]) -> None:
        """Render no more of a split than the trainer will read (debug presets: a few batches, not 212k captchas).
        Sample i is the same captcha in a split of any size, so the limited splits are the first samples of the
        full ones (read from a full cache when there is one)."""
        sizes = {**self.sizes, **self.unseen_sizes}
        cut = {split: n for split, n in limits.items() if split in sizes and 0 < n < sizes[split]}
        if cut:
            log.info("captchas limited to what this run reads: " + ", ".join(
                f"{split} {cut[split]:,} of {n:,}" for split, n in sizes.items() if split in cut))
            self.sizes.update({k: v for k, v in cut.items() if k in self.sizes})
            self.unseen_sizes.update({k: v for k, v in cut.items() if k in self.unseen_sizes})

    @property
    def info(self) -> dict[str, Any]:
        return {"num_classes": len(self.alphabet), "length": self.length, "in_channels": 1,
                "height": self.height, "width": self.width, "alphabet": self.alphabet}

    def setup(self, stage: str = "fit") -> None:
        if stage == "predict":  # the alphabet and image size are config: nothing to render, no font needed
            return
        self.split_fonts = self.resolve_fonts()
        # (the training list repeats the test fonts under test_font_share: each font named once)
        names = {split: ", ".join(dict.fromkeys(Path(f).stem for f in fs)) for split, fs in self.split_fonts.items()}
        train = self.split_fonts["train"]
        test_names = {Path(f).stem for f in self.split_fonts["test"]}
        share = sum(Path(f).stem in test_names for f in train) / len(train)
        log.info(f"captcha fonts: train in {len(set(train))} ({names['train']}"
                 + (f"; {share:.0%} of captchas in the test fonts" if self.test_font_share else "") + "); val/test in "
                 f"{names['test']}" + (f"; val_unseen/test_unseen in {len(self.split_fonts['test_unseen'])} held "
                                       f"out ({names['test_unseen']})" if "test_unseen" in names else ""))
        sizes = {**self.sizes, **{s: n for s, n in self.unseen_sizes.items() if s in self.split_fonts}}
        for split, n in sizes.items():
            if n <= 0:
                continue
            # mode=eval scores one split, normally test: the training split is rendered only if it is the one asked
            # for (on the fly), the others once read
            if not self.cache or (split == "train" and (self.fresh or stage == "eval")):
                self.splits[split] = _OnTheFly(SPLIT_SEEDS[split], n, self.length, self.width, self.height,
                                               self.render_size, fresh_each_epoch=split == "train" and self.fresh,
                                               alphabet=self.alphabet, fonts=self.split_fonts[split],
                                               stroke=self.train_stroke if split == "train" else 0.0,
                                               transform=self._train_distortion(split))
            elif split in UNSEEN_SPLITS or stage == "eval":  # (listed among the splits once read)
                self.pending[split] = _Pending(n, lambda split=split, n=n: self._cached(split, n))
            else:
                self.splits[split] = self._cached(split, n)

    def _cached(self, split: str, n: int) -> ArrayDataset:
        fonts = self.split_fonts[split]
        arrays = cached_split(self.cache_dir, SPLIT_SEEDS[split], n, self.length, self.width, self.height,
                              self.render_size, self.render_workers, what=f"{split} captchas", alphabet=self.alphabet,
                              fonts=fonts, stroke=self.train_stroke if split == "train" else 0.0)
        distorted = self._train_distortion(split)
        return ArrayDataset(arrays, transform=_to_float if distorted is None
                            else functools.partial(_chain, transforms=(_to_float, distorted)))

    def _train_distortion(self, split: str):
        """The training split's distortion (`train_shear`, `train_rotation`, `train_zoom`, `train_warp`) as a
        picklable transform, or None."""
        if split != "train" or not any(self.distortion.values()):
            return None
        return functools.partial(distort, seed=self.seed, **self.distortion)

    def has_split(self, split: str) -> bool:
        return split in self.splits or split in self.pending

    def loader(self, split: str, **kwargs: Any):
        if split in self.pending and kwargs.get("dataset") is None:
            self.splits[split] = self.pending.pop(split).make()
        return super().loader(split, **kwargs)

    def plan(self, split: str, train: bool):
        if train and self.fresh:  # an endless stream: epoch e renders indices [e*n, (e+1)*n)
            return SequentialBatches(self.sizes["train"], self.batch_size, drop_last=True, fresh_each_epoch=True)
        return super().plan(split, train)

    def predict_dataset(self, source: str):
        return read_folder(Path(source), self.length, self.width, self.height, require_labels=False,
                           alphabet=self.alphabet)[1]

    def write_predictions(self, dataset, predictions, out) -> None:
        for path, text in zip(dataset.paths, predictions):
            out.write(f"{path}\t{text}\n")


class _ImageFiles(_PerSample):
    def __init__(self, paths: list[Path], labels: list[str] | None, width: int, height: int, length: int,
                 alphabet: str = ALPHABET):
        self.paths, self.labels, self.width, self.height, self.length = paths, labels, width, height, length
        self.alphabet = alphabet

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
            sample["y"] = torch.from_numpy(encode(self.labels[index], self.alphabet))
        return self._transformed(sample, index)


def read_folder(folder: Path, length: int, width: int, height: int, require_labels: bool = True,
                alphabet: str = ALPHABET):
    files = image_inputs(folder, f"captcha folder not found: {folder}")
    labels = None
    if require_labels:
        labels = []
        for p in files:
            label = p.stem.split("_")[0].lower()
            if len(label) != length or any(c not in alphabet for c in label):
                example = (alphabet * length)[:length]
                bad = "".join(sorted({c for c in label if c not in alphabet}))
                raise UserError(f"{p}: the file name must be the {length}-letter label, in characters of "
                                f"dataset.alphabet='{alphabet}' (e.g. {example}.png or {example}_17.png), got "
                                f"'{p.stem}'" + (f" (not in the alphabet: {bad})" if bad else ""))
            labels.append(label)
    return files, _ImageFiles(files, labels, width, height, length, alphabet)


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
                self.splits[split] = read_folder(self.root / split, self.length, self.width, self.height,
                                                 alphabet=self.alphabet)[1]
        else:
            files, full = read_folder(self.root, self.length, self.width, self.height, alphabet=self.alphabet)
            order = np.random.default_rng(self.seed).permutation(len(files))
            n_val, n_test = int(len(files) * self.val_fraction), int(len(files) * self.test_fraction)
            parts = {"val": order[:n_val], "test": order[n_val:n_val + n_test], "train": order[n_val + n_test:]}
            for split, idx in parts.items():
                if len(idx):
                    self.splits[split] = _ImageFiles([files[i] for i in idx], [full.labels[i] for i in idx],
                                                     self.width, self.height, self.length, self.alphabet)
        if "train" in self.splits:
            self.splits["train"].transform = self._train_distortion("train")
