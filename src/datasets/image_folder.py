"""Labelled images on disk: an image-folder tree or `path class_id` list files (problem 7, dog breeds).

Layouts, checked in this order:
  1. `list_file` (and optionally `val_list`, `test_list`): lines `relative/path.jpg class_id` (the original's format),
     paths relative to `root`; class ids may have gaps and are remapped to 0..K-1 in increasing order.
  2. `root/train/<class>/*.jpg` with optional `root/{val,valid,validation}/<class>/` and `root/test/<class>/` (the
     real copy of stanford-dogs-3breed is laid out so).
  3. `root/<class>/*.jpg` (torchvision's ImageFolder layout).
Without a given validation set, a stratified `val_fraction` of each class (10% by default, as the original) is held
out by a fixed `split_seed`; likewise `test_fraction`.

Images are decoded with PIL, resized so the shorter side is `load_size` and centre-cropped to a square (JPEG
draft mode makes the decoder do most of the down-scaling). With `cache` (the default) every image is decoded once
at setup, in threads, into one uint8 array: a corrupt file is reported before training starts, and batches are
array slices. Without it (datasets too large for memory) images are decoded per batch.

Training batches are augmented as a batch (image_augment.py), each sample's randomness drawn from (seed, epoch,
index); two settings, `heavy` and `light`, are selected by `augment`, so that stages can switch between them:
  - join_same_class: with this probability, the image is joined side by side (or one above the other) with another
    image of the same class, each squeezed into half of the frame;
  - degrees / zoom / translate / hflip: rotation, zoom in and out, shift and mirror in one affine resampling, around
    the centre crop that evaluation uses (zoom 1 = the evaluation view);
  - quadrant_mask: with this probability, one quadrant is blanked (set to the mean colour).
Evaluation takes the centre `image_size` crop of the `load_size` square (the usual resize-256/crop-224 protocol).
The training plan is class-balanced (`classes` x `per_class` per batch, see ClassBalancedBatches) when `balanced`.
"""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from trainer.errors import UserError

from . import image_augment as aug
from .base import (IMAGE_SUFFIXES, BatchPlan, ClassBalancedBatches, ClassifiedData, RandomBatches, image_inputs,
                   images_in, per_sample_uniform)

log = logging.getLogger("trainer")

VAL_NAMES = ("val", "valid", "validation")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
AUGMENT_KEYS = ("degrees", "zoom", "translate", "hflip", "quadrant_mask", "join_same_class")


def load_image(path: Path, size: int) -> np.ndarray:
    """RGB uint8 (3, size, size): shorter side resized to `size`, centre-cropped square."""
    try:
        with Image.open(path) as im:
            im.draft("RGB", (size, size))  # JPEG: decode at a reduced scale that still covers `size`
            im = im.convert("RGB")
            w, h = im.size
            scale = size / min(w, h)
            nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
            im = im.resize((nw, nh), Image.BILINEAR, reducing_gap=3.0)
            left, top = (nw - size) // 2, (nh - size) // 2
            im = im.crop((left, top, left + size, top + size))
            return np.asarray(im).transpose(2, 0, 1).copy()
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise UserError(f"cannot decode image {path}: {type(e).__name__}: {e}; remove or replace the file") from None


def scan_class_folders(folder: Path, class_names: list[str] | None = None) -> tuple[list[Path], list[int], list[str]]:
    """(paths, labels, class names) of folder/<class>/... ; `class_names` fixes the classes (val/test folders)."""
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if not classes:
        raise UserError(f"{folder} has no class folders; expected {folder}/<class name>/<image files>")
    if class_names is not None:
        unknown = [c for c in classes if c not in class_names]
        if unknown:
            raise UserError(f"{folder} has class folder(s) {', '.join(unknown[:5])} that the training set lacks")
    names = class_names if class_names is not None else classes
    paths, labels = [], []
    for name in classes:
        files = images_in(folder / name)
        if not files:
            raise UserError(f"class folder {folder / name} has no images ({', '.join(sorted(IMAGE_SUFFIXES))}); "
                            f"add images or remove the folder")
        paths += files
        labels += [names.index(name)] * len(files)
    return paths, labels, names


def read_list(path: Path, root: Path) -> tuple[list[Path], list[int]]:
    """`relative/path class_id` lines (class ids as in the file, not yet remapped)."""
    if not path.is_file():
        raise UserError(f"list file not found: {path}")
    paths, ids = [], []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, _, label = line.strip().rpartition(" ")
        if not name or not label.lstrip("-").isdigit():
            raise UserError(f"{path}:{n}: expected 'relative/path.jpg class_id', got '{line.strip()[:80]}'")
        file = root / name.strip()
        if not file.is_file():
            raise UserError(f"{path}:{n}: image {file} not found (paths are relative to dataset.root={root})")
        paths.append(file)
        ids.append(int(label))
    if not paths:
        raise UserError(f"list file {path} has no 'path class_id' lines")
    return paths, ids


def stratified_split(labels: Sequence[int], fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held out) indices: round(fraction * class size) of each class held out (at least one of a class of
    two or more when fraction > 0), chosen by a permutation of `seed`."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    held = []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        n = int(round(fraction * len(members)))
        if fraction > 0 and n == 0 and len(members) >= 2:
            n = 1
        held.append(members[:n])
    held_out = np.sort(np.concatenate(held)) if held else np.zeros(0, dtype=np.int64)
    kept = np.setdiff1d(np.arange(len(labels)), held_out)
    return kept, held_out


class ImageSet(torch.utils.data.Dataset):
    """Images of one split with their labels; fetched a batch at a time (`__getitems__`), then transformed."""

    def __init__(self, paths: list[Path], labels: list[int] | None, load_size: int, cache: bool, transform=None):
        self.paths, self.load_size, self.transform = paths, load_size, transform
        self.labels = np.asarray(labels, dtype=np.int64) if labels is not None else None
        self.epoch = 0
        self.images: np.ndarray | None = None
        if cache and paths:
            with ThreadPoolExecutor(max_workers=4) as pool:  # PIL releases the GIL while decoding
                self.images = np.stack(list(pool.map(lambda p: load_image(p, load_size), paths)))
        if self.labels is not None:
            self.members = {int(c): np.flatnonzero(self.labels == c) for c in np.unique(self.labels)}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.paths)

    def fetch(self, indices: np.ndarray) -> torch.Tensor:
        """uint8 (B, 3, S, S)."""
        if self.images is not None:
            return torch.from_numpy(self.images[indices])
        return torch.from_numpy(np.stack([load_image(self.paths[i], self.load_size) for i in indices]))

    def __getitems__(self, indices: list[int]) -> dict[str, Any]:
        idx = np.asarray(indices, dtype=np.int64)
        batch: dict[str, Any] = {"x": self.fetch(idx), "index": torch.from_numpy(idx)}
        if self.labels is not None:
            batch["y"] = torch.from_numpy(self.labels[idx])
        return self.transform(batch, idx, self.epoch, self) if self.transform else batch

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {k: v[0] for k, v in self.__getitems__([index]).items()}


class ImageFolderData(ClassifiedData):
    machine_keys = ClassifiedData.machine_keys | {"cache"}

    def __init__(
        self,
        root: str,
        list_file: str | None = None,
        val_list: str | None = None,
        test_list: str | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.0,
        split_seed: int = 0,
        image_size: int = 224,
        load_size: int | None = None,
        cache: bool = True,
        balanced: bool = True,
        classes: int = 16,
        per_class: int = 2,
        augment: Literal["none", "light", "heavy"] = "light",
        heavy: dict | None = None,
        light: dict | None = None,
        normalize: bool = True,
        **loader: Any,
    ):
        super().__init__(**loader)
        if augment not in ("none", "light", "heavy"):
            raise UserError(f"dataset.augment='{augment}' is not one of none, light, heavy")
        for name, setting in (("heavy", heavy), ("light", light)):
            unknown = set(setting or {}) - set(AUGMENT_KEYS)
            if unknown:
                raise UserError(f"unknown key(s) dataset.{name}.{', '.join(sorted(unknown))}; valid: "
                                f"{', '.join(AUGMENT_KEYS)}")
        self.root = Path(root)
        self.list_file, self.val_list, self.test_list = list_file, val_list, test_list
        for key, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0.0 <= value < 1.0:
                raise UserError(f"dataset.{key}={value} must be in [0, 1)")
        self.val_fraction, self.test_fraction, self.split_seed = val_fraction, test_fraction, split_seed
        self.image_size = image_size
        self.load_size = load_size or round(image_size * 256 / 224)
        if self.load_size < image_size:
            raise UserError(f"dataset.load_size={self.load_size} is smaller than dataset.image_size={image_size}")
        self.cache, self.balanced, self.classes, self.per_class = cache, balanced, classes, per_class
        self.augment = augment
        self.settings = {"heavy": dict(heavy or {}), "light": dict(light or {}), "none": {}}
        self.normalize = normalize
        self.class_names: list[str] = []

    # ---- contract ----
    @property
    def info(self) -> dict[str, Any]:
        return {"num_classes": len(self.class_names), "class_names": list(self.class_names), "in_channels": 3,
                "height": self.image_size, "width": self.image_size}

    def setup(self, stage: str = "fit") -> None:
        if stage == "predict" and self.class_names:  # named by the checkpoint: the training folder is not read
            return
        if not self.root.is_dir():
            raise UserError(f"image folder not found: {self.root} (set dataset.root)")
        parts = self._read_layout()
        for split, (paths, labels) in parts.items():
            if len(paths):
                self.splits[split] = ImageSet(paths, labels, self.load_size, self.cache,
                                              self.train_transform if split == "train" else self.eval_transform)
        if self.balanced:
            self.batch_size = min(self.classes, len(self.class_names)) * self.per_class
        log.info(f"images from {self.root}: {len(self.class_names)} classes; "
                 + ", ".join(f"{k} {len(v):,}" for k, v in self.splits.items())
                 + (" (decoded into memory)" if self.cache else ""))

    def _read_layout(self) -> dict[str, tuple[list[Path], list[int]]]:
        given: dict[str, tuple[list[Path], list[int]]] = {}
        saved = self.class_names  # from a checkpoint: class i must mean the same here, or every score is wrong
        if self.list_file:
            lists = {"train": self.list_file, "val": self.val_list, "test": self.test_list}
            raw = {s: read_list(Path(f), self.root) for s, f in lists.items() if f}
            ids = sorted({i for _, split_ids in raw.values() for i in split_ids})
            remap = {old: new for new, old in enumerate(ids)}
            self.class_names = [str(i) for i in ids]
            given = {s: (paths, [remap[i] for i in split_ids]) for s, (paths, split_ids) in raw.items()}
        elif (self.root / "train").is_dir():
            paths, labels, self.class_names = scan_class_folders(self.root / "train")
            given["train"] = (paths, labels)
            for split, names in (("val", VAL_NAMES), ("test", ("test",))):
                folder = next((self.root / n for n in names if (self.root / n).is_dir()), None)
                if folder is not None:
                    paths, labels, _ = scan_class_folders(folder, self.class_names)
                    given[split] = (paths, labels)
        else:
            paths, labels, self.class_names = scan_class_folders(self.root)
            given["train"] = (paths, labels)
        if len(self.class_names) < 2:
            raise UserError(f"{self.root} holds {len(self.class_names)} class ({', '.join(self.class_names)}); a "
                            "classifier needs at least two class folders (or ids)")
        if saved and saved != self.class_names:
            raise UserError(f"the data under {self.root} has classes {', '.join(self.class_names[:8])}... but the "
                            f"checkpoint was trained on {', '.join(saved[:8])}...; give the same class folders/ids")
        # Hold out what was not given, stratified by class.
        paths, labels = given["train"]
        for split, fraction in (("test", self.test_fraction), ("val", self.val_fraction)):
            if split in given or not fraction:
                continue
            kept, held = stratified_split(labels, fraction, self.split_seed + (split == "test"))
            given[split] = ([paths[i] for i in held], [labels[i] for i in held])
            paths, labels = [paths[i] for i in kept], [labels[i] for i in kept]
        given["train"] = (paths, labels)
        if not paths:
            raise UserError(f"no training images left in {self.root} after holding out validation/test")
        return given

    def plan(self, split: str, train: bool) -> BatchPlan:
        if train and self.balanced:
            return ClassBalancedBatches(self.splits[split].labels, self.classes, self.per_class, seed=self.seed)
        if train:
            return RandomBatches(len(self.splits[split]), self.batch_size, seed=self.seed, drop_last=True)
        return super().plan(split, train)

    # ---- batch transforms ----
    def _finish(self, x: torch.Tensor) -> torch.Tensor:
        if self.normalize:
            mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
            std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
            x = (x - mean) / std
        return x.contiguous(memory_format=torch.channels_last)

    def eval_transform(self, batch: dict[str, Any], indices: np.ndarray, epoch: int, data: ImageSet) -> dict[str, Any]:
        off = (self.load_size - self.image_size) // 2
        x = batch["x"][:, :, off : off + self.image_size, off : off + self.image_size]
        batch["x"] = self._finish(x.float().div_(255.0))
        return batch

    def train_transform(self, batch: dict[str, Any], indices: np.ndarray, epoch: int, data: ImageSet) -> dict[str, Any]:
        s = self.settings[self.augment]
        x = batch["x"].float().div_(255.0)
        u = per_sample_uniform(self.seed, epoch, indices, 3 + aug.DRAWS["affine"] + aug.DRAWS["quadrant_mask"])
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        if s.get("join_same_class"):
            x = self._join(x, batch["y"].numpy(), u[:, 0:3], float(s["join_same_class"]), data)
        zoom = s.get("zoom") or (1.0, 1.0)
        crop = self.image_size / self.load_size  # zoom 1 = the evaluation's centre crop
        x = aug.affine(x - mean, u[:, 3:9], degrees=float(s.get("degrees", 0.0)),
                       zoom=(zoom[0] / crop, zoom[1] / crop), translate=float(s.get("translate", 0.0)),
                       flip_p=float(s.get("hflip", 0.0)), out_size=(self.image_size, self.image_size)) + mean
        if s.get("quadrant_mask"):
            x = aug.quadrant_mask(x - mean, u[:, 9:11], float(s["quadrant_mask"])) + mean
        batch["x"] = self._finish(x)
        return batch

    def _join(self, x: torch.Tensor, y: np.ndarray, u: np.ndarray, p: float, data: ImageSet) -> torch.Tensor:
        """With probability p, join a sample with another image of its class, side by side or one above the other."""
        chosen = np.flatnonzero(u[:, 0] < p)
        if not len(chosen):
            return x
        partners = np.array([data.members[int(y[i])][min(int(u[i, 1] * len(data.members[int(y[i])])),
                                                         len(data.members[int(y[i])]) - 1)] for i in chosen])
        other = data.fetch(partners).float().div_(255.0)
        mine = x[chosen]
        size = x.shape[-1]
        half = size // 2
        out = x.clone()
        side_by_side = torch.from_numpy(u[chosen, 2] < 0.5)
        for flag, dims in ((True, (size, half)), (False, (half, size))):
            sel = torch.nonzero(side_by_side == flag).flatten()
            if not len(sel):
                continue
            a = F.interpolate(mine[sel], size=dims, mode="bilinear", align_corners=False, antialias=True)
            b = F.interpolate(other[sel], size=(dims[0], size - dims[1]) if flag else (size - dims[0], dims[1]),
                              mode="bilinear", align_corners=False, antialias=True)
            out[torch.from_numpy(chosen)[sel]] = torch.cat([a, b], dim=3 if flag else 2)
        return out

    # ---- new inputs (mode=predict) ----
    def predict_dataset(self, source: str) -> ImageSet:
        path = Path(source)
        files = image_inputs(path, f"input not found: {path} (an image or a folder of images)")
        return ImageSet(files, None, self.load_size, cache=False, transform=self.eval_transform)

    def write_predictions(self, dataset, predictions, out) -> None:
        for path, label in zip(dataset.paths, predictions):
            out.write(f"{path}\t{label}\n")
