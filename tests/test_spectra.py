"""Problem 8 (LAMOST spectra): the contest and FITS loaders on files the tests write (and on the real DR7 file of the
`laspec` wheel when it is installed), the SYNTHETIC simulator's physics and bookkeeping, the class-share batch plan,
the soft macro-F1 loss, the model, bad input, and the staged task through the CLI in process (train ce -> soft_f1,
then mode=predict writing contest rows)."""
from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer.datasets import spectra_formats as fmt
from trainer.datasets import spectra_sim as sim
from trainer.datasets.base import ClassShareBatches, EpochBatchSampler
from trainer.datasets.spectra import CONTEST_COUNTS, SpectraData
from trainer.errors import UserError
from trainer.models.dilated_resnet1d import DilatedResNet1D
from trainer.models.heads.classification import ClassificationHead, soft_macro_f1_loss

GRID = sim.wavelength_grid(3690.0, 9100.0, 2600)
GRID_SPEC = {"start": 3690.0, "stop": 9100.0, "n": 2600, "spacing": "log"}


def smooth_spectrum(wave: np.ndarray) -> np.ndarray:
    """A continuum with two broad features: what a resampler must reproduce."""
    return 500 + 0.05 * (wave - 6000) + 80 * np.exp(-0.5 * ((wave - 6564.6) / 30) ** 2) \
        - 60 * np.exp(-0.5 * ((wave - 4862.7) / 25) ** 2)


# ---- the contest layout ---------------------------------------------------------------------------------------------
def write_contest(root: Path, n_per_class: dict[str, int], seed: int = 0) -> tuple[Path, Path]:
    rng = np.random.default_rng(seed)
    folder = root / "spectra"
    folder.mkdir(parents=True, exist_ok=True)
    rows = ["id,type"]
    k = 0
    for kind, n in n_per_class.items():
        for _ in range(n):
            sid = f"{100000 + k}"
            level = {"star": 300.0, "galaxy": 100.0, "qso": 60.0, "unknown": 10.0}[kind]
            flux = level * (1 + 0.1 * rng.standard_normal(2600))
            (folder / f"{sid}.txt").write_text(",".join(f"{v:.4f}" for v in flux) + "\n")
            rows.append(f"{sid},{kind}")
            k += 1
    index = root / "index.csv"
    index.write_text("\n".join(rows) + "\n")
    return index, folder


def contest_data(index: Path, folder: Path, tmp: Path, **kw) -> SpectraData:
    return SpectraData(source="contest", index=str(index), folder=str(folder), cache_dir=str(tmp / "cache"),
                       grid=GRID_SPEC, batch_size=8, **kw)


def test_contest_layout_is_read_split_and_cached(tmp_path):
    index, folder = write_contest(tmp_path, {"star": 20, "galaxy": 10, "qso": 10, "unknown": 10})
    data = contest_data(index, folder, tmp_path, val_fraction=0.2, test_fraction=0.2)
    data.setup()
    sizes = {k: len(v) for k, v in data.splits.items()}
    assert sizes == {"train": 31, "val": 9, "test": 10}  # stratified: 20% of each class, then 20% of the rest
    for split, ds in data.splits.items():
        assert np.bincount(np.asarray(ds.arrays["y"]), minlength=4).min() >= 1, split
    sid = data.meta["train"]["id"][0]
    expected = np.array((folder / f"{sid}.txt").read_text().strip().split(","), dtype=np.float32)
    assert np.array_equal(np.asarray(data.splits["train"].arrays["x"][0]), expected)
    batch = data.splits["train"].__getitems__([0, 1])
    assert batch["x"].shape == (2, 1, 2600) and torch.allclose(batch["x"][0, 0], torch.from_numpy(expected) / 100)
    assert list((tmp_path / "cache" / "spectra-read").glob("*.npy"))  # parsed once
    (folder / f"{sid}.txt").write_text("garbage")  # the cache is read, not the files
    again = contest_data(index, folder, tmp_path, val_fraction=0.2, test_fraction=0.2)
    again.setup()
    assert np.array_equal(np.asarray(again.splits["train"].arrays["x"]), np.asarray(data.splits["train"].arrays["x"]))


@pytest.mark.parametrize("content, words", [
    (",".join(["1.0"] * 2599), r"2599 values, expected 2600"),
    (",".join(["1.0"] * 100 + ["abc"] + ["1.0"] * 2499), r"value 101 of 2600, 'abc', is not a number"),
    (",".join(["1.0"] * 5 + ["nan"] + ["1.0"] * 2594), r"value 6 of 2600, 'nan', is not a finite number"),
])
def test_bad_contest_files_get_one_line_naming_the_file(tmp_path, content, words):
    index, folder = write_contest(tmp_path, {"star": 3, "galaxy": 3, "qso": 3, "unknown": 3})
    bad = folder / "100004.txt"
    bad.write_text(content)
    with pytest.raises(UserError, match=words) as e:
        contest_data(index, folder, tmp_path, cache=False).setup()
    assert str(bad) in str(e.value) and "\n" not in str(e.value)


def test_index_problems_are_one_line_errors(tmp_path):
    index, folder = write_contest(tmp_path, {"star": 3, "galaxy": 3, "qso": 3, "unknown": 3})
    (folder / "100002.txt").unlink()
    with pytest.raises(UserError, match=r"index.csv: id '100002' has no spectrum file \(.*100002.txt not found\)"):
        contest_data(index, folder, tmp_path, cache=False).setup()
    index.write_text("id,type\n1,star\n2,planet\n")
    with pytest.raises(UserError, match=r"index.csv:3: type 'planet' is not one of star, galaxy, qso, unknown"):
        contest_data(index, folder, tmp_path, cache=False).setup()
    index.write_text("name,class\n1,star\n")
    with pytest.raises(UserError, match=r"index.csv:1: header is 'name,class'; expected 'id,type'"):
        contest_data(index, folder, tmp_path, cache=False).setup()


# ---- LAMOST FITS ----------------------------------------------------------------------------------------------------
try:
    from astropy.io import fits
except ImportError:  # the FITS reader is the optional extra '.[fits]' (the test extra installs it)
    fits = None
needs_fits = pytest.mark.skipif(fits is None, reason="the FITS reader needs astropy: pip install -e '.[fits]'")


def lamost_pixels(n: int = 3909) -> tuple[np.ndarray, float, float]:
    coeff0, coeff1 = 3.5682, 0.0001  # the real DR7 file's header values
    return 10 ** (coeff0 + np.arange(n) * coeff1), coeff0, coeff1


def spoiled(wave: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flux with bad pixels (zero inverse variance, and-mask set, NaN) whose values are absurd: a reader that
    averaged them in would be far off."""
    flux = smooth_spectrum(wave).astype(np.float32)
    ivar = np.full_like(flux, 0.01)
    andmask = np.zeros_like(flux)
    flux[1000:1030] = 0.0       # a gap: zero flux, zero ivar
    ivar[1000:1030] = 0.0
    flux[2000:2004] = 1e6       # bad pixels flagged in the and-mask
    andmask[2000:2004] = 4
    flux[3000] = np.nan
    return flux, ivar, andmask


def write_dr7(path: Path, wave, flux, ivar, andmask, coeff0, coeff1, klass="STAR") -> None:
    image = np.stack([flux, ivar, wave, andmask, np.zeros_like(flux)]).astype(np.float32)
    hdu = fits.PrimaryHDU(image)
    hdu.header["COEFF0"], hdu.header["COEFF1"], hdu.header["CLASS"] = coeff0, coeff1, klass
    hdu.header["DATA_V"] = "LAMOST DR7"
    fits.HDUList([hdu]).writeto(path)


def write_dr8(path: Path, wave, flux, ivar, andmask, klass="GALAXY") -> None:
    n = len(wave)
    cols = [fits.Column(name=name, format=f"{n}E", array=np.asarray(a, dtype=np.float32)[None, :])
            for name, a in (("FLUX", flux), ("IVAR", ivar), ("WAVELENGTH", wave), ("ANDMASK", andmask),
                            ("ORMASK", np.zeros(n)), ("NORMALIZATION", np.ones(n)))]
    primary = fits.PrimaryHDU()
    primary.header["CLASS"], primary.header["DATA_V"] = klass, "LAMOST DR8"
    table = fits.BinTableHDU.from_columns(cols, name="COADD")
    fits.HDUList([primary, table]).writeto(path)


@needs_fits
def test_both_fits_layouts_resample_onto_the_grid_without_averaging_bad_pixels(tmp_path):
    wave, c0, c1 = lamost_pixels()
    flux, ivar, andmask = spoiled(wave)
    write_dr7(tmp_path / "spec-dr7.fits", wave, flux, ivar, andmask, c0, c1)
    write_dr8(tmp_path / "spec-dr8.fits.gz", wave, flux, ivar, andmask)
    truth = smooth_spectrum(GRID)
    inside = (GRID > wave[0] + 5) & (GRID < wave[-1] - 5)
    out = {}
    for name, layout in (("spec-dr7.fits", "DR1-DR7"), ("spec-dr8.fits.gz", "DR8+")):
        w, f, good, found = fmt.read_lamost_fits(tmp_path / name)
        assert found.startswith(layout)
        assert good.sum() == len(wave) - 30 - 4 - 1
        out[name], holes, outside = fmt.resample(w, f, good, GRID)
        assert holes > 0 and outside > 0  # the gap is interpolated; the grid starts below the file's 3,700 A
        assert np.abs(out[name][inside] - truth[inside]).max() < 3.0  # no zero, no 1e6, no NaN averaged in
        assert np.isfinite(out[name]).all() and out[name].min() > 300
    assert np.allclose(out["spec-dr7.fits"], out["spec-dr8.fits.gz"])
    # the pilot survey's third row was not wavelengths: the grid then comes from COEFF0/COEFF1
    write_dr7(tmp_path / "pilot.fits", np.linspace(-1, 1, len(wave)), flux, ivar, andmask, c0, c1)
    w, *_ = fmt.read_lamost_fits(tmp_path / "pilot.fits")
    assert np.allclose(w, wave, rtol=1e-6)


@needs_fits
def test_fits_of_neither_layout_is_a_one_line_error(tmp_path):
    fits.HDUList([fits.PrimaryHDU(np.zeros((10, 10), np.float32))]).writeto(tmp_path / "image.fits")
    with pytest.raises(UserError, match=r"image.fits: not a LAMOST low-resolution spectrum \(the primary HDU holds "
                                        r"an image of shape \(10, 10\)\)") as e:
        fmt.read_lamost_fits(tmp_path / "image.fits")
    assert "\n" not in str(e.value)
    cols = [fits.Column(name="FLUX", format="5E", array=np.zeros((1, 5), np.float32))]
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(cols, name="COADD")]).writeto(tmp_path / "t.fits")
    with pytest.raises(UserError, match=r"t.fits: not a LAMOST .*COADD HDU lacks the column\(s\) IVAR, WAVELENGTH"):
        fmt.read_lamost_fits(tmp_path / "t.fits")
    (tmp_path / "junk.fits").write_bytes(b"not a fits file at all" * 10)
    with pytest.raises(UserError, match=r"junk.fits"):
        fmt.read_lamost_fits(tmp_path / "junk.fits")


@needs_fits
def test_fits_folder_labelled_by_header_class(tmp_path):
    wave, c0, c1 = lamost_pixels()
    flux, ivar, andmask = spoiled(wave)
    folder = tmp_path / "fits"
    folder.mkdir()
    kinds = ["STAR", "GALAXY", "QSO", "Unknown"] * 3
    for i, k in enumerate(kinds):
        writer = write_dr7 if i % 2 else write_dr8
        args = (c0, c1, k) if writer is write_dr7 else (k,)
        writer(folder / f"spec-{i:03d}.fits", wave, flux * (1 + i), ivar, andmask, *args)
    data = SpectraData(source="fits", folder=str(folder), cache_dir=str(tmp_path / "cache"), grid=GRID_SPEC,
                       val_fraction=0.0, test_fraction=0.0, batch_size=4)
    data.setup()
    y = np.asarray(data.splits["train"].arrays["y"])
    assert sorted(np.bincount(y).tolist()) == [3, 3, 3, 3]


LASPEC = importlib.util.find_spec("laspec")


@needs_fits
@pytest.mark.skipif(LASPEC is None, reason="laspec (a real LAMOST DR7 spectrum inside its wheel) is not installed")
def test_the_real_dr7_file_in_laspec():
    root = Path(list(LASPEC.submodule_search_locations)[0]) / "data"
    path = root / "spec-58397-EG014118N254444M01_sp03-031.fits"
    wave, flux, good, layout = fmt.read_lamost_fits(path)
    assert layout == "DR1-DR7 primary image" and len(wave) == 3909
    assert 3699 < wave[0] < 3701 and 9098 < wave[-1] < 9100 and good.mean() > 0.95
    assert fmt.fits_class(path) == "star"
    out, holes, outside = fmt.resample(wave, flux, good, GRID)
    assert np.isfinite(out).all() and 0 < outside < 30
    assert abs(np.median(out) - np.median(flux[good])) / np.median(flux[good]) < 0.02
    # a G star: H-alpha absorption where it belongs (vacuum 6564.6 A; the star's velocity is negligible here)
    near = (GRID > 6500) & (GRID < 6630)
    assert abs(GRID[near][np.argmin(out[near])] - 6564.6) < 3.0
    # the medium-resolution file of the same wheel is neither low-resolution layout
    with pytest.raises(UserError, match="not a LAMOST low-resolution spectrum"):
        fmt.read_lamost_fits(root / "med-58408-TD230151N343645T01_sp01-015.fits")


# ---- the simulator --------------------------------------------------------------------------------------------------
def test_simulator_is_seeded_and_meets_the_class_counts():
    counts = {"star": 40, "galaxy": 8, "qso": 6, "unknown": 10}
    a = sim.simulate(GRID, counts, seed=3)
    b = sim.simulate(GRID, counts, seed=3)
    c = sim.simulate(GRID, counts, seed=4)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    flux, labels, meta = a
    assert flux.shape == (64, 2600) and flux.dtype == np.float32 and np.isfinite(flux).all()
    assert np.bincount(labels, minlength=4).tolist() == [counts[k] for k in sim.CLASSES]
    unknown = labels == sim.CLASSES.index("unknown")
    # an unknown is a defective spectrum or one the pipeline could not identify at its S/N; the rest were identified
    thr = np.array([sim.SimSettings().id_snr[t] for t in sim.TRUE_TYPES])[meta["true_type"]]
    assert ((meta["defect"] > 0) | (meta["snr_pipe"] < thr))[unknown].all()
    assert (meta["snr_pipe"] >= thr)[~unknown].all() and (meta["defect"] == 0)[~unknown].all()
    assert (meta["true_type"][~unknown] == labels[~unknown]).all()


def test_contest_imbalance_at_any_scale(tmp_path):
    data = SpectraData(scale={"train": 0.0, "val": 0.0004, "test": 0.0}, cache_dir=str(tmp_path), batch_size=8)
    data.setup()
    y = np.asarray(data.splits["val"].arrays["y"])
    assert np.bincount(y, minlength=4).tolist() == [177, 2, 1, 14]  # 442,969 / 5,231 / 1,363 / 34,288 x 0.0004
    folder = next((tmp_path / "spectra-sim").iterdir())
    assert "SYNTHETIC" in (folder / "README.txt").read_text()
    assert json.loads((folder / "settings.json").read_text())["counts"]["star"] == 177


def _noiseless(kind: str, n: int, **settings) -> tuple[np.ndarray, dict]:
    s = sim.SimSettings(**settings)
    return sim.RENDER[kind](sim.Renderer(GRID, s), n, np.random.default_rng(0))


def _pixel(lam: float) -> float:
    return float(np.interp(np.log(lam), np.log(GRID), np.arange(len(GRID))))


def test_lines_fall_where_physics_puts_them():
    # H-alpha of a star-forming galaxy at z = 0.1: 7,219 A (air) / 7,221 A (vacuum, as LAMOST), within a pixel
    flux, facts = _noiseless("galaxy", 8, z_galaxy=[0.1, 0.1], passive_fraction=0.0)
    assert np.allclose(facts["z"], 0.1)
    window = (GRID > 7150) & (GRID < 7235)  # H-alpha and [N II] 6549 (weaker), not [N II] 6585 at 7,244
    peaks = GRID[window][np.argmax(flux[:, window], axis=1)]
    for peak in peaks:
        assert abs(_pixel(peak) - _pixel(7219.0)) <= 1.0 and abs(_pixel(peak) - _pixel(6564.61 * 1.1)) <= 1.0
    # Mg II of a QSO at z = 1: 5,597.5 A; C IV (1,549 A rest) is then below the grid and adds nothing
    flux, facts = _noiseless("qso", 8, z_qso=[1.0, 1.0])
    z = facts["z"][0]
    window = (GRID > 5400) & (GRID < 5800)
    peaks = GRID[window][np.argmax(flux[:, window], axis=1)]
    assert np.all(np.abs(peaks - 2798.75 * (1 + z)) < 25.0)  # a broad line: within its core
    # Balmer absorption is strongest in A stars; TiO bands appear only in cool ones
    R = sim.Renderer(GRID, sim.SimSettings())
    flux, facts = sim.render_stars(R, 400, np.random.default_rng(1))
    line = np.abs(GRID - 4102.9) < 30  # H-delta's equivalent width against a straight continuum under it
    left, right = np.abs(GRID - 4060) < 8, np.abs(GRID - 4148) < 8
    ew = []
    for f in flux:
        cont = np.interp(GRID[line], [4060, 4148], [f[left].mean(), f[right].mean()])
        ew.append(np.sum((1 - f[line] / cont) * np.gradient(GRID)[line]))
    ew = np.array(ew)
    a_stars = (facts["temp"] > 8000) & (facts["temp"] < 11000) & (facts["subtype"] == 0)
    g_stars = (facts["temp"] > 5200) & (facts["temp"] < 6000)
    assert a_stars.sum() >= 3 and g_stars.sum() >= 20
    assert ew[a_stars].mean() > 2.5 * ew[g_stars].mean() > 0


# ---- batches: fixed class shares -----------------------------------------------------------------------------------
def test_class_share_batches_hold_the_shares_and_are_a_function_of_seed_and_epoch():
    labels = np.array([0] * 900 + [1] * 12 + [2] * 5 + [3] * 70)
    names = ["star", "galaxy", "qso", "unknown"]
    shares = {"star": 0.8, "unknown": 0.1, "galaxy": 0.05, "qso": 0.05}
    plan = ClassShareBatches(labels, 160, shares, seed=7, class_names=names)
    batches = plan.batches(0)
    assert len(batches) == len(labels) // 160
    for b in batches:
        assert np.bincount(labels[b], minlength=4).tolist() == [128, 8, 8, 16]
    assert plan.batches(0) == ClassShareBatches(labels, 160, shares, seed=7, class_names=names).batches(0)
    assert plan.batches(1) != batches
    # rare classes repeat, but within a class every sample is used before any repeats
    qso = [i for i in batches[0] if labels[i] == 2]
    assert len(qso) == 8 and set(qso) == set(range(912, 917))
    # resume mid-epoch and DDP: the sampler's tail from batch 2 is the plan's, and two ranks split each batch
    sampler = EpochBatchSampler(ClassShareBatches(labels, 160, shares, seed=7, class_names=names))
    sampler.set_epoch(0)
    sampler.set_start(2)
    assert list(sampler) == batches[2:]
    ranks = [EpochBatchSampler(plan, rank=r, world_size=2) for r in (0, 1)]
    for r in ranks:
        r.set_epoch(0)
    for b, r0, r1 in zip(batches, *ranks):
        assert sorted(r0 + r1) == sorted(b)
    # odd shares: largest remainders make the batch exact
    plan = ClassShareBatches(labels, 10, [1, 1, 1, 0], seed=0, batches_per_epoch=3)
    assert [len(b) for b in plan.batches(0)] == [10, 10, 10]
    with pytest.raises(UserError, match="does not name class\\(es\\) unknown"):
        ClassShareBatches(labels, 160, {"star": 1, "galaxy": 1, "qso": 1}, class_names=names)
    with pytest.raises(UserError, match="'planet' is not a class"):
        ClassShareBatches(labels, 160, {**shares, "planet": 1}, class_names=names)


def test_a_dataset_config_names_its_training_plan(tmp_path):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"_target_": "trainer.datasets.spectra.SpectraData", "cache_dir": str(tmp_path),
                            "scale": {"train": 0.001, "val": 0, "test": 0}, "batch_size": 40,
                            "train_plan": {"_target_": "trainer.datasets.base.ClassShareBatches", "_partial_": True,
                                           "shares": {"star": 0.5, "unknown": 0.2, "galaxy": 0.15, "qso": 0.15},
                                           "batches_per_epoch": 4}})
    data = instantiate(cfg)
    data.setup()
    plan = data.plan("train", train=True)
    assert isinstance(plan, ClassShareBatches) and plan.seed == data.seed
    y = np.asarray(data.splits["train"].arrays["y"])
    for b in plan.batches(0):
        assert np.bincount(y[b], minlength=4).tolist() == [20, 6, 6, 8]  # star, galaxy, qso, unknown


# ---- loss, model ----------------------------------------------------------------------------------------------------
def test_soft_macro_f1_is_one_minus_macro_f1_for_hard_predictions():
    y = torch.tensor([0, 0, 0, 1, 1, 2, 3, 3])
    pred = torch.tensor([0, 0, 1, 1, 1, 2, 0, 3])
    logits = torch.nn.functional.one_hot(pred, 4).float() * 50
    head = ClassificationHead(4, per_class_f1=True)
    confusion = head.confusion_counts(y, pred)
    metrics = head.confusion_metrics(confusion)
    assert soft_macro_f1_loss(logits, y, 4).item() == pytest.approx(1 - metrics["macro_f1"], abs=1e-5)
    assert metrics["f1_0"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    soft = torch.randn(8, 4, requires_grad=True)
    ClassificationHead(4, loss="soft_macro_f1").loss(soft, {"y": y}).backward()
    assert soft.grad.abs().sum() > 0


def test_model_shapes_and_time_step_dropout():
    model = DilatedResNet1D(4)
    assert model(torch.randn(3, 1, 2600)).shape == (3, 4)
    assert sum(p.numel() for p in model.parameters()) == 748_324
    blocks = [m for m in model.blocks if m.__class__.__name__ == "DilatedBlock"]
    assert [b.convs[0].conv.out_channels // 2 for b in blocks] == [16, 16, 32, 32, 64, 64, 128, 128]
    assert [b.convs[k].conv.dilation[0] for b in blocks[:1] for k in range(3)] == [1, 2, 4]
    assert sum(isinstance(b.pool, torch.nn.MaxPool1d) for b in blocks) == 7
    model.dropout.train()
    h = model.dropout(torch.ones(2, 8, 50))
    assert ((h == 0).all(dim=1) | (h != 0).all(dim=1)).all()  # a time step is dropped in every channel or none


# ---- the staged task through the CLI (in process) ------------------------------------------------------------------
TINY = ["task=spectra", "dataset.scale={train: 0.002, val: 0.001, test: 0.001}", "dataset.batch_size=40",
        "dataset.train_plan.batches_per_epoch=3", "model.widths=[8,8,16]", "model.hidden=16",
        "trainer.progress=false", "stages.ce.trainer.max_epochs=2", "stages.soft_f1.trainer.max_epochs=1"]


def run_cli(tmp: Path, monkeypatch, *args: str) -> int:
    """`python -m trainer ARGS` in this process; returns the exit code."""
    from trainer import cli

    monkeypatch.delenv("TRAINER_RUN_STAMP", raising=False)
    monkeypatch.setattr(sys, "argv", ["trainer"])
    try:
        cli.main([f"paths.output_dir={tmp / 'out'}", f"paths.cache_dir={tmp / 'cache'}",
                  f"paths.data_dir={tmp / 'data'}", *args])
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def test_staged_task_trains_then_predicts_contest_rows(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert run_cli(tmp_path, monkeypatch, *TINY) == 0
    runs = sorted(p for p in (tmp_path / "out" / "spectra").iterdir() if p.name[:1].isdigit())
    run = runs[-1]
    results = json.loads((run / "results.json").read_text())
    assert results["status"] == "ok" and results["monitor"] == "val/macro_f1"
    assert {"test/macro_f1", "test/f1_qso", "test/f1_unknown"} <= set(results["test"])
    for name in ("checkpoints/best-ce.pt", "checkpoints/best.pt", "confusion_test.csv", "confusion_test.png",
                 "config.ce.yaml", "config.soft_f1.yaml"):
        assert (run / name).is_file(), name
    assert "soft_macro_f1" in (run / "config.soft_f1.yaml").read_text()
    assert "ClassShareBatches" in (run / "config.ce.yaml").read_text()
    assert (run / "confusion_test.csv").read_text().startswith("true \\ predicted,star,galaxy,qso,unknown")

    # predict on a folder of contest .txt files and FITS files: the contest's submission rows
    inputs = tmp_path / "new"
    inputs.mkdir()
    expected = ["778899"]
    if fits is not None:
        wave, c0, c1 = lamost_pixels()
        flux, ivar, andmask = spoiled(wave)
        write_dr7(inputs / "spec-a.fits", wave, flux, ivar, andmask, c0, c1)
        write_dr8(inputs / "spec-b.fits.gz", wave, flux, ivar, andmask)
        expected += ["spec-a", "spec-b"]
    (inputs / "778899.txt").write_text(",".join(["123.0"] * 2600))
    out = tmp_path / "submission.csv"
    assert run_cli(tmp_path, monkeypatch, "mode=predict", f"ckpt={run}", f"input={inputs}", f"output={out}") == 0
    rows = out.read_text().splitlines()
    assert rows[0] == "id,type" and len(rows) == 1 + len(expected)
    assert sorted(r.split(",")[0] for r in rows[1:]) == expected
    assert all(r.split(",")[1] in sim.CLASSES for r in rows[1:])

    # a bad input file: one line naming it, exit 2
    (inputs / "778899.txt").write_text(",".join(["1.0"] * 10))
    capsys.readouterr()
    assert run_cli(tmp_path, monkeypatch, "mode=predict", f"ckpt={run}", f"input={inputs}", f"output={out}") == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert any(f"{inputs / '778899.txt'}: 10 values, expected 2600" in line for line in err), err
