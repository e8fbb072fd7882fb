"""The file formats of problem 8 (LAMOST spectra): the Tianchi contest's text files, LAMOST's own FITS files, and the
resampling of both onto the one wavelength grid the model reads.

The Tianchi 2018 contest layout:
  - an index CSV with the header `id,type` (type: star, galaxy, qso or unknown; a test index has `id` only);
  - a folder of `<id>.txt` files, each ONE line of 2,600 comma-separated flux values.
  The contest never said which wavelengths the 2,600 values sample; the grid they are taken to be on is config
  (`dataset.contest_grid`, an assumption: 3,690-9,100 A, LAMOST's range, log-linear like LAMOST's own pixels).

LAMOST low-resolution FITS files (read with astropy, the optional extra `pip install -e '.[fits]'`), checked
against the data-production descriptions of the releases (dr3/dr5/dr6.lamost.org "FITS file" sections, DR8's
lr-data-production-description) and a real DR7 file:
  - DR1-DR7: the primary HDU is a float32 image of 5 rows x ~3,909 pixels: flux, inverse variance, wavelength (A,
    vacuum, heliocentric), and-mask, or-mask; the grid is log-linear, log10(lambda_i) = COEFF0 + i * COEFF1 in the
    header. (The pilot survey's third row was a continuum-subtracted spectrum instead of wavelengths: when that row
    is not an increasing wavelength array, the grid is rebuilt from COEFF0/COEFF1.)
  - DR8 and later: an extension named COADD, a binary table of one row with the array columns FLUX, IVAR,
    WAVELENGTH, ANDMASK, ORMASK, NORMALIZATION.
  A pixel is bad where the inverse variance is 0 (or not finite), the flux is not finite, or the and-mask is set (bad
  in every exposure); `use_ormask` also drops pixels bad in any one exposure. Bad pixels are left out of the
  resampling, never averaged in as zeros; a grid pixel with no good data under it is interpolated from its
  neighbours; grid pixels beyond the file's wavelength range repeat the nearest covered value (and are counted).
"""
from __future__ import annotations

import csv
import gzip
from pathlib import Path
from typing import Iterable

import numpy as np

from trainer.errors import UserError

FITS_SUFFIXES = (".fits", ".fit", ".fits.gz", ".fit.gz", ".fts")
TEXT_SUFFIX = ".txt"


# ---- resampling ---------------------------------------------------------------------------------------------------
def pixel_edges(wave: np.ndarray) -> np.ndarray:
    """Edges of pixels centred on `wave` (increasing): midpoints in log wavelength, the ends extrapolated."""
    ln = np.log(wave)
    mid = 0.5 * (ln[1:] + ln[:-1])
    return np.exp(np.concatenate([[2 * ln[0] - mid[0]], mid, [2 * ln[-1] - mid[-1]]]))


def resample(wave_in: np.ndarray, flux_in: np.ndarray, good: np.ndarray, wave_out: np.ndarray,
             min_cover: float = 0.25) -> tuple[np.ndarray, int, int]:
    """Flux-conserving rebinning of one spectrum onto `wave_out`: each output pixel is the mean flux density of the
    good input pixels under it, weighted by overlap (exact for piecewise-constant spectra: cumulative integrals are
    interpolated at the output edges). Output pixels with less than `min_cover` of their width under good pixels are
    interpolated linearly from the nearest covered ones; those beyond the covered range take the nearest covered
    value (a few pixels at the ends of a LAMOST file, which starts near 3,700 A). Returns (flux on wave_out as float32, pixels interpolated, pixels outside)."""
    if len(wave_in) < 2:
        raise ValueError("fewer than two pixels")
    e_in, e_out = pixel_edges(wave_in), pixel_edges(wave_out)
    width = np.diff(e_in)
    w = np.where(good, width, 0.0)
    f = np.where(good, flux_in, 0.0)
    cf = np.concatenate([[0.0], np.cumsum(f * w)])
    cw = np.concatenate([[0.0], np.cumsum(w)])
    num = np.diff(np.interp(e_out, e_in, cf))
    den = np.diff(np.interp(e_out, e_in, cw))
    covered = den >= min_cover * np.diff(e_out)
    out = np.zeros(len(wave_out), dtype=np.float64)
    out[covered] = num[covered] / den[covered]
    if not covered.any():
        raise ValueError("no good pixel overlaps the grid")
    first, last = np.flatnonzero(covered)[[0, -1]]
    inside = np.zeros(len(wave_out), dtype=bool)
    inside[first : last + 1] = True
    holes = ~covered
    # inside the covered range: linear between the nearest covered pixels; beyond it: the nearest covered value
    out[holes] = np.interp(np.log(wave_out[holes]), np.log(wave_out[covered]), out[covered])
    return out.astype(np.float32), int((holes & inside).sum()), int((~inside).sum())


# ---- the contest's files --------------------------------------------------------------------------------------------
def read_index(path: Path, labelled: bool, classes: Iterable[str]) -> tuple[list[str], list[int] | None]:
    """(ids, class indices or None) from an `id,type` CSV; one-line errors naming the file and line."""
    classes = list(classes)
    if not path.is_file():
        raise UserError(f"index file not found: {path} (an 'id,type' CSV; set dataset.index)")
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise UserError(f"{path} is empty; expected a header 'id,type' and one row per spectrum")
    header = [h.strip().lower() for h in rows[0]]
    if "id" not in header or (labelled and "type" not in header):
        need = "id,type" if labelled else "id"
        raise UserError(f"{path}:1: header is '{','.join(rows[0])}'; expected '{need}'")
    i_id = header.index("id")
    i_type = header.index("type") if "type" in header else None
    ids: list[str] = []
    labels: list[int] = []
    seen: dict[str, int] = {}
    for n, row in enumerate(rows[1:], 2):
        if not row or not "".join(row).strip():
            continue
        if len(row) <= max(i_id, i_type or 0):
            raise UserError(f"{path}:{n}: expected {len(header)} columns ({','.join(header)}), got '{','.join(row)}'")
        sid = row[i_id].strip()
        if not sid:
            raise UserError(f"{path}:{n}: empty id")
        if sid in seen:
            raise UserError(f"{path}:{n}: id '{sid}' is listed twice (first on line {seen[sid]})")
        seen[sid] = n
        ids.append(sid)
        if labelled:
            kind = row[i_type].strip().lower()
            if kind not in classes:
                raise UserError(f"{path}:{n}: type '{row[i_type].strip()}' is not one of {', '.join(classes)}")
            labels.append(classes.index(kind))
    if not ids:
        raise UserError(f"{path} lists no spectra (only a header)")
    return ids, (labels if labelled else None)


def read_contest_txt(path: Path, length: int) -> np.ndarray:
    """One contest spectrum: one line of `length` comma-separated numbers -> float32 (length,)."""
    try:
        text = path.read_text(encoding="ascii", errors="strict").strip()
    except FileNotFoundError:
        raise UserError(f"spectrum file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {path}: {type(e).__name__}: {e}") from None
    tokens = text.split(",")
    if "\n" in text:
        raise UserError(f"{path}: {text.count(chr(10)) + 1} lines; a contest spectrum is one line of {length} "
                        "comma-separated values")
    if len(tokens) != length:
        raise UserError(f"{path}: {len(tokens)} values, expected {length} (one line of comma-separated fluxes; "
                        "a spectrum of another length needs dataset.contest_grid.n)")
    try:
        values = np.array(tokens, dtype=np.float64)
    except ValueError:
        k, bad = next((k, t) for k, t in enumerate(tokens) if not _is_number(t))
        raise UserError(f"{path}: value {k + 1} of {length}, '{bad.strip()[:40]}', is not a number") from None
    if not np.isfinite(values).all():
        k = int(np.flatnonzero(~np.isfinite(values))[0])
        raise UserError(f"{path}: value {k + 1} of {length}, '{tokens[k].strip()}', is not a finite number")
    return values.astype(np.float32)


def _is_number(token: str) -> bool:
    try:
        float(token)
        return True
    except ValueError:
        return False


# ---- LAMOST FITS --------------------------------------------------------------------------------------------------
def _fits():
    try:
        from astropy.io import fits
    except ImportError:
        raise UserError("reading LAMOST FITS files needs astropy: pip install -e '.[fits]'") from None
    return fits


def read_lamost_fits(path: Path, use_ormask: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """(wavelength A, flux, good-pixel mask, layout) of a LAMOST low-resolution FITS file of either layout."""
    fits = _fits()
    if not path.is_file():
        raise UserError(f"FITS file not found: {path}")
    try:
        with fits.open(path, memmap=False) as hdul:
            names = [h.name.upper() for h in hdul]
            if "COADD" in names:
                wave, flux, ivar, andmask, ormask = _coadd_table(path, hdul[names.index("COADD")])
                layout = "DR8+ COADD table"
            else:
                wave, flux, ivar, andmask, ormask = _primary_image(path, hdul[0])
                layout = "DR1-DR7 primary image"
    except UserError:
        raise
    except (OSError, ValueError, TypeError, EOFError, gzip.BadGzipFile) as e:
        raise UserError(f"cannot read {path} as FITS: {type(e).__name__}: {str(e)[:200]}") from None
    good = np.isfinite(flux) & np.isfinite(ivar) & (ivar > 0) & np.isfinite(wave) & (wave > 0)
    if andmask is not None:
        good &= andmask == 0
    if use_ormask and ormask is not None:
        good &= ormask == 0
    if not good.any():
        raise UserError(f"{path}: every pixel is masked or has zero inverse variance; nothing to read")
    return wave, flux, good, layout


def _neither(path: Path, what: str) -> UserError:
    return UserError(f"{path}: not a LAMOST low-resolution spectrum ({what}); expected a DR1-DR7 primary image of 5 "
                     "rows (flux, ivar, wavelength, andmask, ormask) or a DR8+ 'COADD' table with FLUX, IVAR and "
                     "WAVELENGTH columns")


def _coadd_table(path: Path, hdu) -> tuple:
    cols = [c.upper() for c in getattr(hdu, "columns", None).names] if hasattr(hdu, "columns") else []
    missing = [c for c in ("FLUX", "IVAR", "WAVELENGTH") if c not in cols]
    if missing:
        raise _neither(path, f"its COADD HDU lacks the column(s) {', '.join(missing)}")
    data = hdu.data
    if data is None or len(data) < 1:
        raise _neither(path, "its COADD table has no rows")
    row = data[0]

    def col(name: str) -> np.ndarray | None:
        if name not in cols:
            return None
        return np.asarray(row[cols.index(name)], dtype=np.float64).ravel()

    wave, flux, ivar = col("WAVELENGTH"), col("FLUX"), col("IVAR")
    if not (len(wave) == len(flux) == len(ivar)) or len(wave) < 2:
        raise _neither(path, f"COADD arrays of lengths {len(wave)}, {len(flux)}, {len(ivar)}")
    return wave, flux, ivar, col("ANDMASK"), col("ORMASK")


def _primary_image(path: Path, hdu) -> tuple:
    data = hdu.data
    shape = None if data is None else tuple(np.shape(data))
    if data is None or len(shape) != 2 or shape[0] < 3 or shape[0] > 6 or shape[1] < 100:
        raise _neither(path, f"the primary HDU holds {'no image' if data is None else f'an image of shape {shape}'}")
    data = np.asarray(data, dtype=np.float64)
    flux, ivar = data[0], data[1]
    wave = data[2]
    header = hdu.header
    plausible = np.all(np.diff(wave) > 0) and 2000 < wave[0] < wave[-1] < 12000
    if "COEFF0" in header and "COEFF1" in header:
        from_coeff = 10 ** (float(header["COEFF0"]) + np.arange(shape[1]) * float(header["COEFF1"]))
        if not plausible:
            wave = from_coeff  # the pilot survey's row 3 is not wavelengths
    elif not plausible:
        raise _neither(path, "its third row is not an increasing wavelength array and the header has no "
                             "COEFF0/COEFF1")
    andmask = data[3] if shape[0] > 3 else None
    ormask = data[4] if shape[0] > 4 else None
    return wave, flux, ivar, andmask, ormask


def fits_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(FITS_SUFFIXES))


def fits_id(path: Path) -> str:
    """The id of a FITS file: its name without the FITS suffix (spec-55859-F5902_sp01-001.fits.gz -> spec-...-001)."""
    name = path.name
    for suffix in sorted(FITS_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def find_fits(folder: Path, sid: str) -> Path | None:
    for suffix in FITS_SUFFIXES:
        p = folder / f"{sid}{suffix}"
        if p.is_file():
            return p
    return None


def fits_class(path: Path) -> str | None:
    """The LAMOST pipeline's class (header CLASS: STAR, GALAXY, QSO, Unknown), lower-cased, if the file has one."""
    fits = _fits()
    with fits.open(path, memmap=False) as hdul:
        value = hdul[0].header.get("CLASS")
    return str(value).strip().lower() if value is not None else None
