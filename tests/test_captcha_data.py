"""Captcha data: rendering is a pure function of the seed; the cache round-trips; the folder loader reads labels from
file names and fails clearly on bad files."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from trainer.datasets.captcha import ALPHABET, CaptchaData, CaptchaFolder, cached_split, render, shown_text
from trainer.errors import UserError


def test_rendering_is_reproducible_from_the_seed():
    a, label_a = render(123)
    b, label_b = render(123)
    c, label_c = render(124)
    assert np.array_equal(a, b) and label_a == label_b
    assert not np.array_equal(a, c)
    assert a.shape == (60, 160) and a.dtype == np.uint8
    assert len(label_a) == 4 and all(ch in ALPHABET for ch in label_a)


def test_labels_are_lower_case_of_mixed_case_draws():
    import random
    import string

    def draw(seed):
        rng = random.Random(seed)
        return "".join(rng.choice(string.ascii_letters) for _ in range(4))

    drawn = [draw(s) for s in range(200)]
    assert any(ch.isupper() for d in drawn for ch in d) and any(ch.islower() for d in drawn for ch in d)
    assert [render(s, size=(32, 12))[1] for s in range(5)] == [d.lower() for d in drawn[:5]]
    assert [shown_text(s) for s in range(200)] == drawn


def test_cache_is_written_once_and_memory_mapped(tmp_path):
    first = cached_split(tmp_path, 5, 12, 4, 40, 15, (160, 60), workers=2)
    files = sorted(p.name for p in (tmp_path / "captcha").iterdir())
    again = cached_split(tmp_path, 5, 12, 4, 40, 15, (160, 60), workers=1)
    assert sorted(p.name for p in (tmp_path / "captcha").iterdir()) == files
    assert isinstance(again["x"], np.memmap) and np.array_equal(first["x"], again["x"])
    assert first["x"].shape == (12, 1, 15, 40) and first["y"].shape == (12, 4)
    # sample i of a split is the same whatever the split size or worker count
    solo = np.asarray(Image.fromarray(render(5 * 10_000_019 + 3)[0]).resize((40, 15), Image.BILINEAR,
                                                                              reducing_gap=None))
    assert np.array_equal(first["x"][3, 0], solo)


def test_validation_and_test_sets_do_not_depend_on_the_run_seed(tmp_path):
    sets = []
    for seed in (0, 1):
        dm = CaptchaData(width=32, height=12, train_size=8, val_size=4, test_size=4, cache_dir=str(tmp_path),
                         render_workers=1, seed=seed, batch_size=4)
        dm.setup()
        sets.append(dm.splits["val"].__getitems__([0, 1, 2, 3])["x"])
    assert np.array_equal(sets[0].numpy(), sets[1].numpy())


def test_fresh_each_epoch_renders_new_training_captchas(tmp_path):
    dm = CaptchaData(width=32, height=12, train_size=4, val_size=0, test_size=0, cache_dir=str(tmp_path),
                     fresh_each_epoch=True, batch_size=4)
    dm.setup()
    loader = dm.loader("train", train=True)
    loader.batch_sampler.set_epoch(0)
    e0 = next(iter(loader))["x"]
    loader.batch_sampler.set_epoch(1)
    e1 = next(iter(loader))["x"]
    assert e0.shape == (4, 1, 12, 32) and not np.array_equal(e0.numpy(), e1.numpy())


def _write_folder(root, names):
    root.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        Image.fromarray(render(i)[0]).save(root / name)


def test_folder_loader_reads_labels_from_file_names(tmp_path):
    _write_folder(tmp_path / "caps", [f"{w}_{i}.png" for i, w in enumerate(["abcd", "WXYZ", "qrst"] * 4)])
    dm = CaptchaFolder(root=str(tmp_path / "caps"), val_fraction=0.25, test_fraction=0.25, width=64, height=24,
                       batch_size=2)
    dm.setup()
    assert {k: len(v) for k, v in dm.splits.items()} == {"val": 3, "test": 3, "train": 6}
    sample = dm.splits["train"][0]
    assert sample["x"].shape == (1, 24, 64) and sample["y"].shape == (4,)
    labels = {"".join(ALPHABET[i] for i in dm.splits[s][j]["y"]) for s in dm.splits for j in range(len(dm.splits[s]))}
    assert labels == {"abcd", "wxyz", "qrst"}
    # dataset.train_shear slants the training images of a folder too, never the others
    slanted = CaptchaFolder(root=str(tmp_path / "caps"), val_fraction=0.25, test_fraction=0.25, width=64, height=24,
                            batch_size=2, train_shear=0.4)
    slanted.setup()
    assert not torch.equal(slanted.splits["train"][0]["x"], sample["x"])
    assert torch.equal(slanted.splits["val"][0]["x"], dm.splits["val"][0]["x"])


def test_folder_loader_uses_split_subfolders(tmp_path):
    _write_folder(tmp_path / "caps" / "train", ["abcd.png", "efgh.png"])
    _write_folder(tmp_path / "caps" / "val", ["ijkl.png"])
    dm = CaptchaFolder(root=str(tmp_path / "caps"), batch_size=2)
    dm.setup()
    assert sorted(dm.splits) == ["train", "val"] and len(dm.splits["train"]) == 2


@pytest.mark.parametrize("names, message", [
    (["abc.png"], "must be the 4-letter label"),
    (["ab1d.png"], "must be the 4-letter label"),
    ([], "no images"),
])
def test_folder_loader_rejects_bad_folders(tmp_path, names, message):
    _write_folder(tmp_path / "caps", names)
    with pytest.raises(UserError, match=message):
        CaptchaFolder(root=str(tmp_path / "caps")).setup()


def test_undecodable_image_is_a_clear_error(tmp_path):
    _write_folder(tmp_path / "caps", ["abcd.png"])
    (tmp_path / "caps" / "efgh.png").write_bytes(b"not a png")
    dm = CaptchaFolder(root=str(tmp_path / "caps"), val_fraction=0, test_fraction=0)
    dm.setup()
    with pytest.raises(UserError, match="cannot decode image .*efgh.png"):
        [dm.splits["train"][i] for i in range(2)]


def test_two_processes_rendering_one_cache_take_turns(tmp_path):
    """torchrun's ranks and parallel sweep jobs render the same new cache at once: one renders, the other waits and
    reads it (before, the first to finish removed the parts folder the other was writing into)."""
    import multiprocessing as mp

    args = (tmp_path, 1000, 96, 4, 40, 16, (160, 60), 1)
    with mp.get_context("fork").Pool(2) as pool:
        first, second = pool.starmap(_cached_labels, [args, args])
    assert first == second and len(first) == 96
    assert not list((tmp_path / "captcha").glob("*.parts"))


def _cached_labels(*args) -> list:
    return cached_split(*args)["y"].tolist()
