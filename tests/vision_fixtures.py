"""Small fixtures in the real formats of the vision problems: Fashion-MNIST IDX files and labelled image folders."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
from PIL import Image

FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of a uint8 array: 0, 0, type 0x08, ndim, big-endian dims, data."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    return bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def learnable_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """28x28 images whose class is visible: a bright bar at a class-dependent row, plus noise."""
    images = rng.integers(0, 60, size=(len(labels), 28, 28), dtype=np.uint8)
    for i, y in enumerate(labels):
        images[i, 2 + 2 * int(y) : 4 + 2 * int(y), 4:24] = 250
    return images


def write_fashion(folder: Path, n_train: int = 400, n_test: int = 100, gz: bool = True, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        rng.shuffle(labels)
        images_name, labels_name = FILES[split]
        for name, array in ((images_name, learnable_images(labels, rng)), (labels_name, labels)):
            data = idx_bytes(array)
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(data, compresslevel=1))
            else:
                (folder / name).write_bytes(data)
    return folder


CLASS_COLOURS = {"beagle": (200, 120, 40), "husky": (90, 90, 110), "poodle": (240, 240, 235)}


def write_image(path: Path, colour: tuple[int, int, int], rng: np.random.Generator, size=(48, 40)) -> None:
    w, h = size
    pixels = np.clip(np.array(colour)[None, None, :] + rng.normal(0, 25, size=(h, w, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def write_image_folder(root: Path, per_class: int = 8, splits: tuple[str, ...] = (), seed: int = 0) -> Path:
    """root/<class>/*.jpg, or root/<split>/<class>/*.jpg for each split in `splits`."""
    rng = np.random.default_rng(seed)
    for split in splits or ("",):
        for name, colour in CLASS_COLOURS.items():
            for i in range(per_class):
                suffix = ".png" if i % 3 == 0 else ".jpg"
                write_image(root / split / name / f"{name}_{i}{suffix}", colour, rng,
                            size=(48 + 4 * (i % 3), 40 + 6 * (i % 2)))
    return root


def write_list_layout(root: Path, per_class: int = 8, ids=(3, 7, 12), seed: int = 0) -> Path:
    """Images in root/images/ and a train.txt of 'images/x.jpg class_id' lines, class ids with gaps."""
    rng = np.random.default_rng(seed)
    lines = []
    for class_id, colour in zip(ids, CLASS_COLOURS.values()):
        for i in range(per_class):
            rel = f"images/c{class_id}_{i}.jpg"
            write_image(root / rel, colour, rng)
            lines.append(f"{rel} {class_id}")
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    return root
