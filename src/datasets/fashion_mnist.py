"""Fashion-MNIST (Xiao, Rasul & Vollgraf 2017; problems 5 and 6 of docs/problems.md) from its IDX files.

Reads the four files of the official release, `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`,
`t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte` (gzipped or not), from `root` or from torchvision's layout
`root/FashionMNIST/raw/`. `download=true` fetches them with torchvision's FashionMNIST downloader into that layout.
The IDX format (LeCun's MNIST page): two zero bytes, a type byte (0x08 = unsigned byte), the number of dimensions,
then one big-endian uint32 per dimension and the data; a file that does not match its header is reported, not read.

Splits: the validation images are carved from the 60k training images by a permutation of a fixed seed
(`val_seed`, independent of the run's seed, so every run validates on the same images); the 10k test images are
only scored at the end (trainer.test_after_fit). `train_size` keeps fewer training images (the dropout study
overfits on purpose) and `train_eval_size` adds a "train_eval" split: that many training images without
augmentation, scored in eval mode alongside validation (trainer.also_evaluate=[train_eval]) to measure the
train/validation gap.

Everything is held in memory (47 MB) and served a batch at a time by ArrayDataset; augmentation is a vectorised
batch transform whose randomness comes from (seed, epoch, sample index), see image_augment.py.

Nothing here is Fashion-MNIST's alone except the defaults: another dataset in the same four IDX files of 28x28 images
(MNIST, Kuzushiji-MNIST) is a YAML file that sets `classes`, `mean`/`std`, `name` and, for its torchvision layout
and downloader, `torchvision_name` (conf/dataset/mnist.yaml).
"""
from __future__ import annotations

import gzip
import logging
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from trainer.errors import UserError

from . import image_augment as aug
from .base import IMAGE_SUFFIXES, ArrayDataset, ClassifiedData, image_inputs, per_sample_uniform

log = logging.getLogger("trainer")

CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
#: The datasets in torchvision's MNIST family whose four IDX files this reader takes (`torchvision_name`: the folder
#: torchvision keeps them in, root/<name>/raw, and its downloader).
TORCHVISION_IDX = ("FashionMNIST", "MNIST", "KMNIST")
FILES = {
    ("train", "x"): "train-images-idx3-ubyte",
    ("train", "y"): "train-labels-idx1-ubyte",
    ("test", "x"): "t10k-images-idx3-ubyte",
    ("test", "y"): "t10k-labels-idx1-ubyte",
}
MEAN, STD = 0.2860, 0.3530  # of Fashion-MNIST's 60k training images, scaled to [0, 1]
# ---- the IDX format ----------------------------------------------------------------------------------------------
def read_idx(path: Path) -> np.ndarray:
    """An IDX file of unsigned bytes (gzipped or not) as an array of the shape its header gives."""
    try:
        raw = path.read_bytes()
        data = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise UserError(f"cannot read {path}: {type(e).__name__}: {e}; download the file again") from None
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] != 0x08 or not 1 <= data[3] <= 4:
        raise UserError(f"{path} is not an IDX file of unsigned bytes (bad magic number {data[:4].hex()}); "
                        f"download the file again")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise UserError(f"{path} is truncated or corrupt: its header is cut short; download the file again")
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = memoryview(data)[4 + 4 * ndim :]
    expected = int(np.prod(dims))
    if len(body) != expected:
        raise UserError(f"{path} is truncated or corrupt: its header says {'x'.join(map(str, dims))} = {expected:,} "
                        f"bytes but it holds {len(body):,}; download the file again")
    return np.frombuffer(body, dtype=np.uint8).reshape(dims)


def find_file(root: Path, stem: str, torchvision_name: str = "FashionMNIST") -> Path | None:
    for folder in (root, root / torchvision_name / "raw", root / "raw"):
        for name in (stem + ".gz", stem):
            if (folder / name).is_file():
                return folder / name
    return None


def download(root: Path, torchvision_name: str = "FashionMNIST", name: str = "Fashion-MNIST") -> None:
    """torchvision's downloader of the dataset (mirrors and checksums are its own); files land in
    root/<torchvision_name>/raw."""
    import torchvision.datasets

    if torchvision_name not in TORCHVISION_IDX:
        raise UserError(f"dataset.torchvision_name={torchvision_name} is not one of {', '.join(TORCHVISION_IDX)}, "
                        "whose files this reader takes; copy the four IDX files into dataset.root instead")
    try:
        for train in (True, False):
            getattr(torchvision.datasets, torchvision_name)(str(root), train=train, download=True)
    except Exception as e:
        raise UserError(f"cannot download {name} into {root}: {type(e).__name__}: {str(e)[:200]}; copy the "
                        f"four IDX .gz files there instead") from None


def load_arrays(root: Path, allow_download: bool, classes: int = len(CLASSES), torchvision_name: str = "FashionMNIST",
                name: str = "Fashion-MNIST") -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{"train": (images (60000, 28, 28) uint8, labels (60000,) int64), "test": ...}; labels below `classes`."""
    paths = {key: find_file(root, stem, torchvision_name) for key, stem in FILES.items()}
    if any(p is None for p in paths.values()) and allow_download:
        download(root, torchvision_name, name)
        paths = {key: find_file(root, stem, torchvision_name) for key, stem in FILES.items()}
    missing = [FILES[k] for k, p in paths.items() if p is None]
    if missing:
        raise UserError(f"{name} file {missing[0]}[.gz] not found in {root} (nor in {root}/{torchvision_name}/raw); "
                        f"set dataset.root to the folder of the four IDX files, or dataset.download=true")
    out = {}
    for split in ("train", "test"):
        images, labels = read_idx(paths[(split, "x")]), read_idx(paths[(split, "y")])
        if images.ndim == 3 and images.shape[1:] != (28, 28):
            raise UserError(f"{paths[(split, 'x')]} holds {images.shape[1]}x{images.shape[2]} images; {name}'s are "
                            "28x28, the only size this reader takes")
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise UserError(f"{paths[(split, 'x')]} and {paths[(split, 'y')]} do not match: images "
                            f"{images.shape}, labels {labels.shape}; expected (N, 28, 28) images and N labels")
        if labels.size and labels.max() >= classes:
            raise UserError(f"{paths[(split, 'y')]} has label {labels.max()}, but dataset.classes names {classes} "
                            f"classes (labels 0..{classes - 1}); give every class a name")
        out[split] = (images, labels.astype(np.int64))
    return out


# ---- the DataModule -------------------------------------------------------------------------------------------------
class FashionMNISTData(ClassifiedData):
    machine_keys = ClassifiedData.machine_keys | {"download"}

    def __init__(
        self,
        root: str = "data/fashion-mnist",
        download: bool = False,
        val_size: int = 5000,
        val_seed: int = 0,
        train_size: int | None = None,
        train_eval_size: int = 0,
        normalize: bool = True,
        hflip: float = 0.5,
        pad: int = 2,
        pad_mode: str = "constant",
        erase: float = 0.0,
        erase_scale: tuple[float, float] = (0.02, 0.25),
        erase_ratio: tuple[float, float] = (0.3, 3.3),
        classes: list[str] | None = None,
        mean: float = MEAN,
        std: float = STD,
        name: str = "Fashion-MNIST",
        torchvision_name: str = "FashionMNIST",
        **loader: Any,
    ):
        super().__init__(**loader)
        classes = list(CLASSES if classes is None else classes)
        if len(classes) < 2 or len(set(map(str, classes))) != len(classes):
            raise UserError(f"dataset.classes must name two or more classes, each once (label i is classes[i]); got "
                            f"{classes}")
        if not std > 0:
            raise UserError(f"dataset.std={std} must be > 0")
        if pad_mode not in ("constant", "reflect", "replicate"):
            raise UserError(f"dataset.pad_mode='{pad_mode}' is not one of constant, reflect, replicate")
        for key, value in (("hflip", hflip), ("erase", erase)):
            if not 0.0 <= value <= 1.0:
                raise UserError(f"dataset.{key}={value} is a probability: give a value in [0, 1]")
        if not (isinstance(pad, int) and pad >= 0):
            raise UserError(f"dataset.pad={pad} must be a whole number of pixels >= 0 (0: no pad-and-crop)")
        self.root, self.download = Path(root), download
        self.val_size, self.val_seed, self.train_size = val_size, val_seed, train_size
        self.train_eval_size, self.normalize = train_eval_size, normalize
        self.hflip, self.pad, self.pad_mode = hflip, pad, pad_mode
        self.erase, self.erase_scale, self.erase_ratio = erase, tuple(erase_scale), tuple(erase_ratio)
        self.class_names = [str(c) for c in classes]
        self.mean, self.std, self.name, self.torchvision_name = float(mean), float(std), name, torchvision_name

    @property
    def info(self) -> dict[str, Any]:
        return {"num_classes": len(self.class_names), "class_names": list(self.class_names), "in_channels": 1,
                "height": 28, "width": 28, "input_shape": [1, 28, 28]}

    def setup(self, stage: str = "fit") -> None:
        if stage == "predict":  # the class names are config (and in the checkpoint): no IDX file needed
            return
        arrays = load_arrays(self.root, self.download, len(self.class_names), self.torchvision_name, self.name)
        images, labels = arrays["train"]
        n = len(images)
        if not 0 <= self.val_size < n:
            raise UserError(f"dataset.val_size={self.val_size} must be in [0, {n})")
        order = np.random.default_rng(self.val_seed).permutation(n)
        val_idx, train_idx = order[: self.val_size], order[self.val_size :]
        if self.train_size is not None:
            if not 0 < self.train_size <= len(train_idx):
                raise UserError(f"dataset.train_size={self.train_size} must be in [1, {len(train_idx)}]")
            train_idx = train_idx[: self.train_size]
        parts = {"train": np.sort(train_idx), "val": np.sort(val_idx)}
        if self.train_eval_size:
            parts["train_eval"] = np.sort(train_idx[: self.train_eval_size])
        for split, idx in parts.items():
            if len(idx):
                self.splits[split] = self._dataset(images[idx], labels[idx], train=split == "train")
        self.splits["test"] = self._dataset(*arrays["test"], train=False)
        log.info(f"{self.name} from {self.root}: " + ", ".join(f"{k} {len(v):,}" for k, v in self.splits.items()))

    def _dataset(self, images: np.ndarray, labels: np.ndarray | None, train: bool) -> ArrayDataset:
        arrays = {"x": np.ascontiguousarray(images[:, None])}
        if labels is not None:
            arrays["y"] = labels
        return ArrayDataset(arrays, transform=self.train_transform if train else self.eval_transform)

    # ---- batch transforms ----
    def _to_float(self, x: torch.Tensor) -> torch.Tensor:
        return x.float().div_(255.0)

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        return x.sub_(self.mean).div_(self.std) if self.normalize else x

    def eval_transform(self, batch: dict[str, torch.Tensor], indices: np.ndarray, epoch: int) -> dict[str, torch.Tensor]:
        batch["x"] = self._normalize(self._to_float(batch["x"]))
        return batch

    def train_transform(self, batch: dict[str, torch.Tensor], indices: np.ndarray, epoch: int) -> dict[str, torch.Tensor]:
        x = self._to_float(batch["x"])
        u = per_sample_uniform(self.seed, epoch, indices, aug.DRAWS["hflip"] + aug.DRAWS["pad_crop"]
                               + aug.DRAWS["erase"])
        if self.hflip:
            x = aug.hflip(x, u[:, 0:1], self.hflip)
        if self.pad:
            x = aug.pad_crop(x, u[:, 1:3], self.pad, self.pad_mode)
        x = self._normalize(x)
        if self.erase:
            x = aug.erase(x, u[:, 3:8], self.erase, self.erase_scale, self.erase_ratio, value=0.0)
        batch["x"] = x
        return batch

    # ---- new inputs (mode=predict) ----
    def predict_dataset(self, source: str) -> ArrayDataset:
        """An IDX image file (gzipped or not), an image file, or a folder of images (grey, resized to 28x28)."""
        path = Path(source)
        files = image_inputs(path, f"input not found: {path} (an IDX image file, an image, or a folder of images)")
        if len(files) == 1 and files[0].suffix.lower() not in IMAGE_SUFFIXES:
            images = read_idx(files[0])
            if images.ndim != 3:
                raise UserError(f"{files[0]} holds an array of shape {images.shape}, not (N, H, W) images")
            names = [f"{files[0]}:{i}" for i in range(len(images))]
        else:
            images = np.stack([_read_grey(p) for p in files])
            names = [str(p) for p in files]
        dataset = self._dataset(images, None, train=False)
        dataset.names = names
        return dataset

    def write_predictions(self, dataset, predictions, out) -> None:
        for name, label in zip(dataset.names, predictions):
            out.write(f"{name}\t{label}\n")


def _read_grey(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("L").resize((28, 28), Image.BILINEAR))
    except (UnidentifiedImageError, OSError) as e:
        raise UserError(f"cannot decode image {path}: {e}; remove or replace the file") from None
