"""LAMOST spectra, 4 classes (star, galaxy, qso, unknown): problem 8 of docs/problems.md, the Tianchi 2018 contest.

`source` picks where the spectra come from; all end up as float32 flux on ONE wavelength grid (`grid`):
  - `simulate` (the default; no real spectra can be had here): the SYNTHETIC survey of spectra_sim.py, with the
    contest's class imbalance times `scale` per split (train, val and test drawn from their own fixed seeds, so
    validation and test never change with the training size). Rendered once into `cache_dir/spectra-sim/<key>/`,
    whose README.txt says that it is synthetic, then memory-mapped; each spectrum's true type, S/N, redshift,
    magnitude and defect are kept beside it (`meta_<split>.npz`) for breakdowns (bench/spectra_breakdown.py).
  - `contest`: the Tianchi layout, an `id,type` index CSV and a folder of `<id>.txt` files (spectra_formats.py),
    on `contest_grid` (an assumption, see there), resampled onto `grid` when the two differ. Parsed once into a
    cache; validation and test are stratified shares of the index, held out by a fixed `split_seed`.
  - `fits`: LAMOST FITS files of either layout (DR1-DR7 image, DR8+ COADD table), resampled onto `grid`; labels from
    an `id,type` index (ids are file names without the FITS suffix) or, without one, the files' own CLASS keyword.
Model input: `normalize: scale` divides the flux by `flux_scale` (the original's /100); `normalize: median` divides
each spectrum by its median absolute flux (a brightness-free shape); `median_level` adds the removed brightness,
log10(median / flux_scale), as a second, constant channel.
`mode=predict` reads a folder (or one file) of contest .txt and/or FITS files and writes the contest's submission
rows, `id,type`.
The training plan is named in the config (`dataset.train_plan`, e.g. ClassShareBatches with the original's fixed
class shares); without one it is a random permutation.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer.errors import UserError

from . import spectra_formats as fmt
from . import spectra_sim
from .base import ArrayDataset, ClassifiedData
from .image_folder import stratified_split

log = logging.getLogger("trainer")

CLASSES = list(spectra_sim.CLASSES)  # star, galaxy, qso, unknown
#: The contest's training index: spectra per class (docs/problems.md; 483,851 in all).
CONTEST_COUNTS = {"star": 442_969, "galaxy": 5_231, "qso": 1_363, "unknown": 34_288}
SPLIT_SEEDS = {"train": 11, "val": 22, "test": 33}
NORMALIZE = ("scale", "median", "median_level", "none")
SIM_VERSION = 1  # bump when the simulator's output changes, to invalidate caches


def grid_of(spec: dict, what: str) -> np.ndarray:
    try:
        return spectra_sim.wavelength_grid(float(spec["start"]), float(spec["stop"]), int(spec["n"]),
                                   str(spec.get("spacing", "log")))
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"dataset.{what} must be {{start: A, stop: A, n: pixels, spacing: log|linear}}; got {spec} "
                        f"({type(e).__name__}: {e})") from None


class SpectraData(ClassifiedData):
    machine_keys = ClassifiedData.machine_keys | {"cache_dir", "cache", "read_workers"}

    def __init__(
        self,
        source: str = "simulate",
        grid: dict | None = None,
        contest_grid: dict | None = None,
        normalize: str = "scale",
        flux_scale: float = 100.0,
        # simulate
        scale: dict | None = None,
        sim: dict | None = None,
        sim_seed: int = 0,
        cache: bool = True,
        cache_dir: str = "data/cache",
        # contest / fits
        index: str | None = None,
        folder: str | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        split_seed: int = 0,
        use_ormask: bool = False,
        read_workers: int = 4,
        **loader: Any,
    ):
        super().__init__(**loader)
        if source not in ("simulate", "contest", "fits"):
            raise UserError(f"dataset.source='{source}' is not one of simulate, contest, fits")
        if normalize not in NORMALIZE:
            raise UserError(f"dataset.normalize='{normalize}' is not one of {', '.join(NORMALIZE)}")
        self.source, self.normalize, self.flux_scale = source, normalize, float(flux_scale)
        self.grid_spec = dict(grid or {"start": 3690.0, "stop": 9100.0, "n": 2600, "spacing": "log"})
        self.contest_spec = dict(contest_grid or self.grid_spec)
        self.wave = grid_of(self.grid_spec, "grid")
        self.contest_wave = grid_of(self.contest_spec, "contest_grid")
        self.scale = dict(scale or {"train": 0.15, "val": 0.02, "test": 0.08})
        try:
            self.sim_settings = spectra_sim.SimSettings.from_dict(sim)
        except (KeyError, TypeError) as e:
            raise UserError(f"dataset.sim: {e}") from None
        self.sim_seed, self.cache, self.cache_dir = sim_seed, cache, Path(cache_dir)
        self.index, self.folder = index, folder
        for key, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0.0 <= value < 1.0:
                raise UserError(f"dataset.{key}={value} must be in [0, 1)")
        self.val_fraction, self.test_fraction, self.split_seed = val_fraction, test_fraction, split_seed
        self.use_ormask, self.read_workers = use_ormask, read_workers
        self.class_names = list(CLASSES)
        self.meta: dict[str, dict[str, np.ndarray]] = {}

    @property
    def info(self) -> dict[str, Any]:
        return {"num_classes": len(self.class_names), "class_names": list(self.class_names),
                "in_channels": 2 if self.normalize == "median_level" else 1, "length": len(self.wave)}

    # ---- setup ----
    def setup(self, stage: str = "fit") -> None:
        if stage == "predict":  # classes and grid are config: nothing to read until the inputs come
            return
        if self.source == "simulate":
            self._setup_simulated(stage)
        else:
            flux, labels, ids = self._read_labelled()
            self._split_real(flux, labels, ids)
        log.info(f"spectra ({self.source}{', SYNTHETIC' if self.source == 'simulate' else ''}): "
                 + ", ".join(f"{k} {len(v):,} ({self._counts(k)})" for k, v in self.splits.items()))

    def _counts(self, split: str) -> str:
        y = np.asarray(self.splits[split].arrays["y"])
        return " ".join(f"{name} {int(n)}" for name, n in zip(self.class_names, np.bincount(y, minlength=4)))

    def _setup_simulated(self, stage: str) -> None:
        for split in ("train", "val", "test"):
            factor = float(self.scale.get(split) or 0)
            if factor <= 0 or (split == "train" and stage == "eval"):
                continue
            counts = {c: max(1, int(round(n * factor))) for c, n in CONTEST_COUNTS.items()}
            x, y, meta = self._simulated_split(split, counts)
            self.meta[split] = meta
            self.splits[split] = ArrayDataset({"x": x, "y": y}, transform=self.transform)

    def _simulated_split(self, split: str, counts: dict[str, int]):
        seed = self.sim_seed * 1000 + SPLIT_SEEDS[split]
        if not self.cache:
            x, y, meta = spectra_sim.simulate(self.wave, counts, seed, self.sim_settings)
            return x, y, meta
        key = json.dumps({"v": SIM_VERSION, "grid": self.grid_spec, "counts": counts, "seed": seed,
                          "sim": spectra_sim.settings_dict(self.sim_settings)}, sort_keys=True)
        digest = hashlib.sha1(key.encode()).hexdigest()[:10]
        folder = self.cache_dir / "spectra-sim" / f"{split}-{sum(counts.values())}-{digest}"
        files = {"x": folder / "x.npy", "y": folder / "y.npy", "meta": folder / "meta.npz"}
        if all(f.is_file() for f in files.values()):
            try:
                x, y = np.load(files["x"], mmap_mode="r"), np.load(files["y"])
                with np.load(files["meta"]) as m:
                    meta = {k: m[k] for k in m.files}
                if len(x) == len(y) == sum(counts.values()) and x.shape[1] == len(self.wave):
                    return x, y, meta
            except (ValueError, OSError, EOFError):
                pass
            log.warning(f"simulated spectra in {folder} are unreadable; simulating them again")
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create {folder}: {e.strerror}; set paths.cache_dir to a writable folder, or "
                            "dataset.cache=false") from None
        log.info(f"simulating the {split} split ({sum(counts.values()):,} SYNTHETIC spectra) into {folder}; later "
                 "runs reuse it")
        x, y, meta = spectra_sim.simulate(self.wave, counts, seed, self.sim_settings)
        (folder / "README.txt").write_text(
            "SYNTHETIC spectra: not LAMOST data. Drawn by trainer.datasets.spectra_sim (a physical simulator) for the\n"
            f"'{split}' split; settings in settings.json. Results on them say nothing about real LAMOST spectra.\n")
        (folder / "settings.json").write_text(json.dumps(json.loads(key), indent=2) + "\n")
        _atomic_save(files["y"], lambda f: np.save(f, y))
        _atomic_save(files["meta"], lambda f: np.savez(f, **meta))
        _atomic_save(files["x"], lambda f: np.save(f, x))  # last: its presence means the rest is there
        return np.load(files["x"], mmap_mode="r"), y, meta

    # ---- real files ----
    def _read_labelled(self) -> tuple[np.ndarray, np.ndarray, list[str]]:
        if not self.folder:
            raise UserError(f"dataset.source={self.source} needs dataset.folder (the folder of spectra)")
        folder = Path(self.folder)
        if not folder.is_dir():
            raise UserError(f"spectra folder not found: {folder} (set dataset.folder)")
        if self.source == "contest":
            if not self.index:
                raise UserError("dataset.source=contest needs dataset.index (the 'id,type' CSV)")
            ids, labels = fmt.read_index(Path(self.index), True, self.class_names)
            paths = [folder / f"{sid}{fmt.TEXT_SUFFIX}" for sid in ids]
            self._check_exist(Path(self.index), ids, paths)
            flux = self._cached_read(paths, Path(self.index))
        else:
            if self.index:
                ids, labels = fmt.read_index(Path(self.index), True, self.class_names)
                paths = [fmt.find_fits(folder, sid) for sid in ids]
                self._check_exist(Path(self.index), ids, paths)
            else:  # labels from the files' own CLASS keyword
                paths = fmt.fits_files(folder)
                if not paths:
                    raise UserError(f"no FITS files ({', '.join(fmt.FITS_SUFFIXES)}) in {folder}")
                ids, labels = [fmt.fits_id(p) for p in paths], []
                for p in paths:
                    kind = fmt.fits_class(p)
                    if kind not in self.class_names:
                        raise UserError(f"{p}: header CLASS={kind!r} is not one of {', '.join(self.class_names)}; "
                                        "give labels in an 'id,type' index (dataset.index)")
                    labels.append(self.class_names.index(kind))
            flux = self._cached_read(paths, Path(self.index) if self.index else folder)
        return flux, np.asarray(labels, dtype=np.int64), ids

    @staticmethod
    def _check_exist(index: Path, ids: list[str], paths: list[Path | None]) -> None:
        for n, (sid, p) in enumerate(zip(ids, paths)):
            if p is None or not p.is_file():
                where = p if p is not None else f"{sid}.fits[.gz]"
                raise UserError(f"{index}: id '{sid}' has no spectrum file ({where} not found)")

    def _read_one(self, path: Path) -> np.ndarray:
        """One spectrum on the grid: a contest .txt or a FITS file of either layout."""
        if path.name.lower().endswith(fmt.TEXT_SUFFIX):
            flux = fmt.read_contest_txt(path, len(self.contest_wave))
            if len(self.contest_wave) == len(self.wave) and np.allclose(self.contest_wave, self.wave):
                return flux
            return fmt.resample(self.contest_wave, flux, np.ones(len(flux), bool), self.wave)[0]
        if path.name.lower().endswith(fmt.FITS_SUFFIXES):
            wave, flux, good, _ = fmt.read_lamost_fits(path, self.use_ormask)
            try:
                return fmt.resample(wave, flux, good, self.wave)[0]
            except ValueError as e:
                raise UserError(f"{path}: cannot resample onto the grid: {e}") from None
        raise UserError(f"{path}: not a contest .txt nor a FITS file ({', '.join(fmt.FITS_SUFFIXES)})")

    def _read_all(self, paths: list[Path]) -> np.ndarray:
        t0 = time.monotonic()
        out = np.empty((len(paths), len(self.wave)), dtype=np.float32)
        with ThreadPoolExecutor(max_workers=max(1, self.read_workers)) as pool:
            for i, flux in enumerate(pool.map(self._read_one, paths)):
                out[i] = flux
        log.info(f"read {len(paths):,} spectra in {time.monotonic() - t0:.1f}s")
        return out

    def _cached_read(self, paths: list[Path], origin: Path) -> np.ndarray:
        if not self.cache:
            return self._read_all(paths)
        st = origin.stat()
        key = json.dumps({"origin": str(origin.resolve()), "size": st.st_size, "mtime": st.st_mtime_ns,
                          "n": len(paths), "first": str(paths[0]), "last": str(paths[-1]), "grid": self.grid_spec,
                          "contest_grid": self.contest_spec, "ormask": self.use_ormask}, sort_keys=True)
        file = self.cache_dir / "spectra-read" / f"{hashlib.sha1(key.encode()).hexdigest()[:12]}.npy"
        if file.is_file():
            try:
                x = np.load(file, mmap_mode="r")
                if x.shape == (len(paths), len(self.wave)):
                    return x
            except (ValueError, OSError):
                pass
        x = self._read_all(paths)
        try:
            file.parent.mkdir(parents=True, exist_ok=True)
            _atomic_save(file, lambda f: np.save(f, x))
        except OSError as e:
            log.warning(f"cannot cache the parsed spectra in {file.parent}: {e}; reading them again next time")
        return x

    def _split_real(self, flux: np.ndarray, labels: np.ndarray, ids: list[str]) -> None:
        idx = np.arange(len(labels))
        parts: dict[str, np.ndarray] = {}
        for split, fraction in (("test", self.test_fraction), ("val", self.val_fraction)):
            if not fraction:
                continue
            kept, held = stratified_split(labels[idx], fraction, self.split_seed + (split == "test"))
            parts[split], idx = idx[held], idx[kept]
        parts["train"] = idx
        for split in ("train", "val", "test"):
            if split in parts and len(parts[split]):
                sel = np.sort(parts[split])
                self.splits[split] = ArrayDataset({"x": flux[sel], "y": labels[sel]}, transform=self.transform)
                self.meta[split] = {"id": np.asarray(ids)[sel]}

    # ---- batches ----
    def transform(self, batch: dict[str, torch.Tensor], indices: np.ndarray, epoch: int) -> dict[str, torch.Tensor]:
        x = batch["x"].float()
        if self.normalize == "scale":
            x = x / self.flux_scale
        elif self.normalize in ("median", "median_level"):
            level = x.abs().median(dim=-1, keepdim=True).values.clamp(min=1e-6)
            x = x / level
            if self.normalize == "median_level":  # the brightness the division removed, as a second channel
                batch["x"] = torch.stack([x, torch.log10(level / self.flux_scale).expand_as(x)], dim=1)
                return batch
        batch["x"] = x.unsqueeze(1)  # (B, 1, L)
        return batch

    # ---- prediction ----
    def predict_dataset(self, source: str) -> ArrayDataset:
        path = Path(source)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file()
                           and p.name.lower().endswith((fmt.TEXT_SUFFIX, *fmt.FITS_SUFFIXES)))
            if not files:
                raise UserError(f"no spectra in {path}: expected contest <id>.txt files or LAMOST FITS files "
                                f"({', '.join(fmt.FITS_SUFFIXES)})")
        elif path.is_file():
            files = [path]
        else:
            raise UserError(f"input not found: {path} (a folder of contest .txt / LAMOST FITS spectra, or one file)")
        flux = self._read_all(files)
        ds = ArrayDataset({"x": flux}, transform=self.transform)
        ds.ids = [fmt.fits_id(p) if p.name.lower().endswith(fmt.FITS_SUFFIXES) else p.name[: -len(fmt.TEXT_SUFFIX)]
                  for p in files]
        return ds

    def write_predictions(self, dataset: ArrayDataset, predictions: list[Any], out) -> None:
        """The contest's submission format: a header `id,type`, then one `id,type` row per spectrum."""
        out.write("id,type\n")
        for sid, label in zip(dataset.ids, predictions):
            out.write(f"{sid},{label}\n")


def _atomic_save(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
