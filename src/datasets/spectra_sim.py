"""A SYNTHETIC survey of LAMOST-like low-resolution spectra: the embedded default of problem 8 (no real LAMOST or SDSS
spectra can be had here). Every number below is a physical model of our own choosing, written from textbook and
survey values; nothing was fitted to real spectra, and results on it say nothing about real LAMOST data.

What is drawn (all wavelengths in vacuum, as LAMOST's; flux density f_lambda in arbitrary "contest" units):
  - stars: a Planck continuum at T = 3,000-30,000 K (a spectral-type mix weighted to F-G-K), blue line blanketing in
    cool stars, interstellar reddening, and absorption lines whose equivalent widths follow temperature: the Balmer
    series (strongest near 9,500 K, Stark-broadened in A stars), Ca II H and K, the G band, Mg b, Na D, the Ca II
    triplet, He I in hot stars and the TiO bands below ~4,000 K; a few M dwarfs with H-alpha in emission and white
    dwarfs with very broad Balmer lines; radial velocities of tens of km/s.
  - galaxies at z = 0.01-0.3: an old-population continuum (a cool Planck curve with the 4,000 A break, D4000) with
    velocity-broadened Ca II H and K, G band, Mg b, Na D and Balmer absorption; star-forming ones add a young
    component and nebular emission ([O II], H-beta, [O III], [N II], H-alpha, [S II]) with Balmer decrement and
    BPT-like line ratios; passive ones have none or weak LINER-like lines; a few Seyfert 2 ratios.
  - QSOs at z = 0.1-4: a broken power law (alpha_nu ~ -0.44 blueward of 5,000 A rest and -2.45 redward, the slopes
    of the SDSS composite, Vanden Berk et al. 2001), a small blue bump, host light at low z, broad Ly-alpha, Si IV,
    C IV, C III], Mg II, H-gamma, H-beta, H-alpha and narrow [O III], with the composite's rest equivalent widths
    scattered per object; each line appears where (1+z) puts it inside the grid; the Ly-alpha forest (mean optical
    depth 0.0018 (1+z)^3.92, Faucher-Giguere et al. 2008) and a Lyman limit at high z.
  - observation: a fibre magnitude per class (LAMOST-like limits), a sky of continuum plus emission lines (OI 5579,
    6302, 6365, Na D and Hg street lights, an OH forest in the red) brightened by the moon, the spectrograph's
    throughput (two arms joined near 5,800 A, weak at both ends), Poisson noise of source plus sky, so the noise
    depends on the flux; sky-subtraction residuals, telluric bands, flux-calibration wiggles and arm mismatch.
  - labels as a pipeline gives them: a star, galaxy or QSO whose g-band S/N, as the pipeline measures it on its own
    exposures (the delivered spectrum's S/N scattered by `snr_scatter_dex`, log-normal), falls below the type's
    threshold is "unknown"; so are spectra with a severe defect (a dead spectrograph arm, wide gaps, cosmic-ray
    spikes, bad sky subtraction, a failed flux calibration). Near the threshold the label is therefore not a pure
    function of the spectrum: that, the faint end of each class and redshifts where a class's lines fall in noisy
    or sky-filled parts of the range are what make the problem hard; no label is flipped at random.

Class counts are given per split; the simulator draws each class until its quota is met, so the contest's imbalance
(443k star / 34k unknown / 5.2k galaxy / 1.4k QSO) is exact at any scale. Everything is a function of the seed,
vectorised with numpy in chunks of `chunk` spectra.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

log = logging.getLogger("trainer")

C_KMS = 299_792.458
HC_K = 1.438777e8  # h c / k in Angstrom Kelvin
CLASSES = ("star", "galaxy", "qso", "unknown")
TRUE_TYPES = ("star", "galaxy", "qso")
DEFECTS = ("none", "dead_arm", "gaps", "spikes", "sky_residual", "calibration")

# rest vacuum wavelengths (A)
BALMER = {"Ha": 6564.61, "Hb": 4862.68, "Hg": 4341.68, "Hd": 4102.89, "He": 3971.20, "H8": 3890.16, "H9": 3836.47,
          "H10": 3798.98}
BALMER_SCALE = {"Ha": 1.0, "Hb": 1.0, "Hg": 0.9, "Hd": 0.85, "He": 0.7, "H8": 0.6, "H9": 0.5, "H10": 0.4}
CA_K, CA_H = 3934.78, 3969.59
G_BAND = 4305.6
MG_B = (5168.76, 5174.13, 5185.05)
NA_D = (5891.58, 5897.56)
CA_TRIPLET = (8500.36, 8544.44, 8664.52)
HE_I = (4472.73, 5877.25)
TIO_HEADS = (4762.0, 4955.0, 5168.0, 5449.0, 5849.0, 6160.0, 6653.0, 7056.0, 7591.0, 8434.0)
TIO_WEIGHTS = (0.5, 0.6, 0.7, 0.7, 0.6, 0.9, 0.8, 1.0, 0.8, 0.6)
# nebular emission (rest vacuum)
OII = (3727.09, 3729.88)
OIII = (4960.30, 5008.24)
NII = (6549.86, 6585.27)
SII = (6718.29, 6732.67)
OI_NEB = 6302.05
# QSO lines: (rest wavelength, composite rest EW in A, FWHM range in km/s); Vanden Berk et al. 2001, Table 2
QSO_BROAD = (
    (1215.67, 92.0, (3500, 6500)),   # Ly-alpha (+ N V)
    (1397.61, 8.1, (4000, 7000)),    # Si IV + O IV]
    (1549.06, 24.0, (3500, 6500)),   # C IV
    (1908.73, 21.2, (4500, 7500)),   # C III] (+ Al III, Si III])
    (2798.75, 32.3, (3000, 5500)),   # Mg II
    (4341.68, 13.0, (2500, 5000)),   # H-gamma
    (4862.68, 46.2, (2500, 5500)),   # H-beta
    (6564.61, 194.5, (2500, 5000)),  # H-alpha
)
QSO_NARROW = ((5008.24, 14.0), (4960.30, 4.7), (3728.48, 1.6), (3426.84, 1.3), (3869.85, 1.4))
LYA, LYB, LYLIMIT = 1215.67, 1025.72, 911.75
# night sky emission (observed frame, vacuum): relative strengths per unit of the dark sky continuum
SKY_LINES = ((5578.89, 40.0), (6302.05, 12.0), (6365.54, 4.0), (5891.58, 6.0), (5897.56, 5.0), (4359.56, 5.0),
             (5462.27, 5.0), (4047.71, 2.0), (5684.0, 2.0))
OH_LINES = (6865, 6925, 7278, 7318, 7342, 7371, 7404, 7573, 7753, 7796, 7823, 7856, 7915, 7966, 7995, 8346, 8401,
            8432, 8467, 8507, 8550, 8763, 8829, 8888, 8945, 8960, 8990, 9003, 9040, 9077)
TELLURIC = ((6867.0, 6884.0, 0.25), (7160.0, 7340.0, 0.10), (7594.0, 7621.0, 0.55), (8130.0, 8350.0, 0.08))
ARM_SPLIT = 5800.0


@dataclass
class SimSettings:
    """The simulator's knobs (conf/dataset/spectra.yaml `sim:`); the physics constants live in the code above."""
    resolution: float = 1800.0               # R = lambda / FWHM of the spectrograph (LAMOST LRS: ~1,800 at 5,500 A)
    flux_at_16mag: float = 400.0             # continuum flux units of a 16th-magnitude object in the r band
    dark_sky_mag: float = 18.0               # dark sky in a fibre, per pixel, as a magnitude in the r band
    moon_max: float = 3.0                    # sky brightened by a factor uniform in [1, moon_max]
    exposure: float = 0.9                    # detected photons per flux unit at peak throughput (sets the S/N scale)
    conditions_dex: float = 0.15             # night-to-night scatter of the photon rate (seeing, transparency)
    mag_range: dict = field(default_factory=lambda: {"star": [11.0, 17.8], "galaxy": [14.5, 18.8],
                                                     "qso": [16.0, 19.6]})
    mag_slope: dict = field(default_factory=lambda: {"star": 0.3, "galaxy": 0.45, "qso": 0.4})  # dN/dm ~ 10^(s m)
    id_snr: dict = field(default_factory=lambda: {"star": 4.0, "galaxy": 5.0, "qso": 5.0})  # pipeline's g-band S/N
    snr_scatter_dex: float = 0.12            # the pipeline's S/N against the delivered spectrum's (log-normal)
    unknown_defective: float = 0.3           # share of the unknowns that are defective spectra
    unknown_types: dict = field(default_factory=lambda: {"star": 0.86, "galaxy": 0.08, "qso": 0.06})
    mild_defects: float = 0.1                # share of all spectra with a mild defect (a few spikes, a short gap)
    passive_fraction: float = 0.45           # galaxies without star formation
    z_galaxy: list = field(default_factory=lambda: [0.01, 0.3])
    z_qso: list = field(default_factory=lambda: [0.1, 4.0])
    chunk: int = 2048                        # spectra rendered at once (memory ~ chunk x length x 40 bytes)

    @classmethod
    def from_dict(cls, d: dict | None) -> "SimSettings":
        d = dict(d or {})
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise KeyError(f"unknown simulator key(s): {', '.join(sorted(unknown))}; valid: {', '.join(sorted(known))}")
        return cls(**d)


def wavelength_grid(start: float, stop: float, n: int, spacing: str = "log") -> np.ndarray:
    """`n` pixel centres from `start` to `stop` (A), equally spaced in log wavelength (constant velocity per pixel,
    as LAMOST's own sampling) or in wavelength."""
    if spacing == "log":
        return np.exp(np.linspace(np.log(start), np.log(stop), n))
    if spacing == "linear":
        return np.linspace(start, stop, n)
    raise ValueError(f"grid spacing '{spacing}' is not log or linear")


def _g(x: np.ndarray, mu: float, sd: float) -> np.ndarray:
    return np.exp(-0.5 * ((x - mu) / sd) ** 2)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x)))  # (no overflow for large |x|)


def planck(lam: np.ndarray, temp: np.ndarray) -> np.ndarray:
    """B_lambda(T) up to a constant, for wavelengths (N, L) or (L,) in A and temperatures (N, 1) in K."""
    x = np.minimum(HC_K / (lam * temp), 80.0)
    return (lam / 5000.0) ** -5 / np.expm1(x)


class Renderer:
    """Everything that depends on the wavelength grid: pixel geometry, sky, throughput; adds lines by window."""

    def __init__(self, wave: np.ndarray, s: SimSettings):
        self.wave, self.s = wave.astype(np.float64), s
        self.L = len(wave)
        self.lnw = np.log(self.wave)
        self.dlam = np.gradient(self.wave)
        self.index = np.arange(self.L, dtype=np.float64)
        w = self.wave
        # spectrograph throughput of each arm, joined by a dichroic near 5,800 A (both arms weak at their ends)
        blue = _g(w, 4700.0, 800.0) * _sigmoid((ARM_SPLIT - w) / 40.0)
        red = 0.9 * _g(w, 7200.0, 1200.0) * _sigmoid((w - ARM_SPLIT) / 40.0)
        self.throughput = np.maximum(blue + red, 0.02)
        dark = s.flux_at_16mag * 10 ** (-0.4 * (s.dark_sky_mag - 16.0))
        self.sky_cont = dark * (0.7 + 0.5 * (w - 3690.0) / 5400.0)  # redder sky continuum
        lines = np.zeros(self.L)
        for lam, strength in SKY_LINES:
            lines += strength * dark * self._profile(lam, 1.0)
        oh_rng = np.random.default_rng(8)  # fixed: the OH forest's relative strengths, the same in every run
        for lam in OH_LINES:
            lines += dark * oh_rng.uniform(3.0, 15.0) * self._profile(float(lam), 1.0)
        self.sky_lines = lines
        self.blue_arm = w < ARM_SPLIT
        self.g_band = (w >= 4100) & (w <= 5500)
        self.r_band = (w >= 5600) & (w <= 6900)
        self.ref_band = (w >= 6000) & (w <= 6400)

    def _profile(self, lam: float, sigma_extra: float) -> np.ndarray:
        """A unit-area line at `lam` on the grid (instrumental width, pixel-integrated)."""
        sd = np.sqrt((lam / (self.s.resolution * 2.3548)) ** 2 + sigma_extra ** 2 + np.interp(lam, self.wave,
                                                                                                self.dlam) ** 2 / 12)
        return np.exp(-0.5 * ((self.wave - lam) / sd) ** 2) / (np.sqrt(2 * np.pi) * sd)

    def add_lines(self, out: np.ndarray, center: np.ndarray, amp: np.ndarray, sigma_kms: np.ndarray | float = 0.0,
                  sigma_a: np.ndarray | float = 0.0, rows: np.ndarray | None = None) -> None:
        """out[i] += amp[i] x a unit-area Gaussian at the observed wavelength center[i] (A), its width the
        instrument's, the velocity width `sigma_kms` and an intrinsic `sigma_a` (A) in quadrature, integrated over
        the pixel. Lines outside the grid (or of zero amplitude) add nothing. Only a window around each line is
        computed."""
        n = len(center)
        rows = np.arange(n) if rows is None else rows
        center = np.asarray(center, dtype=np.float64)
        sigma = np.sqrt((center / (self.s.resolution * 2.3548)) ** 2 + (center * np.asarray(sigma_kms) / C_KMS) ** 2
                        + np.asarray(sigma_a) ** 2 + np.interp(center, self.wave, self.dlam) ** 2 / 12)
        sigma = np.broadcast_to(sigma, center.shape)
        amp = np.broadcast_to(np.asarray(amp, dtype=np.float64), center.shape)
        keep = (center > self.wave[0] - 5 * sigma) & (center < self.wave[-1] + 5 * sigma) & (amp != 0)
        if not keep.any():
            return
        center, sigma, amp, rows = center[keep], sigma[keep], amp[keep], rows[keep]
        pix = np.interp(center, self.wave, self.index)
        spix = sigma / np.interp(center, self.wave, self.dlam)
        half = int(min(np.ceil(5 * spix.max()) + 1, self.L))
        cols = np.floor(pix).astype(np.int64)[:, None] + np.arange(-half, half + 1)[None, :]
        valid = (cols >= 0) & (cols < self.L)
        colc = np.clip(cols, 0, self.L - 1)
        x = (self.wave[colc] - center[:, None]) / sigma[:, None]
        vals = amp[:, None] * np.exp(-0.5 * x * x) / (np.sqrt(2 * np.pi) * sigma[:, None])
        r = np.broadcast_to(rows[:, None], cols.shape)
        # (row, column) pairs are unique within one call, so plain fancy-index addition is exact
        out[r[valid], cols[valid]] += vals[valid].astype(out.dtype)

    def cont_at(self, cont: np.ndarray, lam_obs: np.ndarray) -> np.ndarray:
        """The continuum of each row at its observed wavelength (0 outside the grid)."""
        pix = np.clip(np.rint(np.interp(lam_obs, self.wave, self.index)).astype(np.int64), 0, self.L - 1)
        inside = (lam_obs >= self.wave[0]) & (lam_obs <= self.wave[-1])
        return np.where(inside, cont[np.arange(len(lam_obs)), pix], 0.0)


def reddening(R: "Renderer", ebv: np.ndarray) -> np.ndarray:
    """Extinction by dust of colour excess E(B-V) (R_V = 3.1), A_lambda ~ lambda^-1.3: a power-law approximation of
    the Galactic extinction curve over the optical range."""
    return np.exp(-0.4 * np.log(10) * 3.1 * ebv[:, None] * ((5500.0 / R.wave) ** 1.3)[None, :])


# ---- the three kinds of object ---------------------------------------------------------------------------------------
def _star_temperatures(n: int, rng: np.random.Generator) -> np.ndarray:
    """Spectral-type mix of a magnitude-limited stellar survey (M, K, G, F, A, B), uniform in log T within a type."""
    bins = np.array([[3000, 3900], [3900, 5200], [5200, 6000], [6000, 7500], [7500, 10000], [10000, 30000]])
    share = np.array([0.12, 0.33, 0.30, 0.18, 0.05, 0.02])
    b = rng.choice(len(share), size=n, p=share)
    lo, hi = np.log10(bins[b, 0]), np.log10(bins[b, 1])
    return 10 ** rng.uniform(lo, hi)


def render_stars(R: Renderer, n: int, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    w = R.wave[None, :]
    temp = _star_temperatures(n, rng)
    lgt = np.log10(temp)[:, None]
    v = rng.normal(-10.0, 40.0, n)
    z = v / C_KMS
    white_dwarf = rng.random(n) < 0.01
    temp = np.where(white_dwarf, 10 ** rng.uniform(4.0, 4.4, n), temp)
    lgt = np.log10(temp)[:, None]
    lam = w / (1 + z[:, None])
    cont = planck(lam, temp[:, None])
    # blue line blanketing of cool stars (the many metal lines that a low-resolution spectrum does not resolve)
    blanket = 0.55 * _sigmoid((3.78 - lgt) / 0.05)
    cont *= 1.0 - blanket * np.exp(-(R.wave - 3690.0) / 900.0)[None, :]  # (a star's z is ~1e-4: rest = observed)
    depth = np.zeros((n, R.L), dtype=np.float64)
    rows = np.arange(n)
    vsini = np.where(lgt[:, 0] > 3.85, rng.uniform(30, 150, n), rng.uniform(2, 15, n))
    obs = 1 + z
    # Balmer series: strongest in A stars, Stark-broadened there; very broad in white dwarfs
    ew_bal = (13.0 * _g(lgt[:, 0], 3.98, 0.09) + 2.5 * _g(lgt[:, 0], 3.77, 0.08)
              + 2.5 * _sigmoid((lgt[:, 0] - 4.15) / 0.05)) * rng.lognormal(0, 0.15, n)
    wid_bal = 1.0 + 7.0 * _g(lgt[:, 0], 3.98, 0.09)
    ew_bal = np.where(white_dwarf, rng.uniform(25, 45, n), ew_bal)
    wid_bal = np.where(white_dwarf, rng.uniform(20, 35, n), wid_bal)
    for name, lam0 in BALMER.items():
        scale = BALMER_SCALE[name]
        R.add_lines(depth, lam0 * obs, ew_bal * scale * obs, vsini, wid_bal * lam0 / 4100.0, rows)
    ew_k = 16.0 * _sigmoid((3.86 - lgt[:, 0]) / 0.035) * (1 - 0.4 * _sigmoid((3.58 - lgt[:, 0]) / 0.03)) + 0.3
    ew_k = np.where(white_dwarf, 0.0, ew_k * rng.lognormal(0, 0.15, n))
    R.add_lines(depth, CA_K * obs, ew_k * obs, vsini, 3.5, rows)
    R.add_lines(depth, CA_H * obs, 0.9 * ew_k * obs, vsini, 3.5, rows)
    cool = np.where(white_dwarf, 0.0, 1.0)
    R.add_lines(depth, G_BAND * obs, cool * 6.0 * _g(lgt[:, 0], 3.70, 0.07) * obs, vsini, 7.0, rows)
    ew_mg = cool * 7.0 * _sigmoid((3.74 - lgt[:, 0]) / 0.04)
    for lam0, share in zip(MG_B, (0.3, 0.35, 0.35)):
        R.add_lines(depth, lam0 * obs, ew_mg * share * obs, vsini, 0.8, rows)
    ew_na = cool * 5.0 * _sigmoid((3.68 - lgt[:, 0]) / 0.04) + 0.4
    for lam0, share in zip(NA_D, (0.55, 0.45)):
        R.add_lines(depth, lam0 * obs, ew_na * share * obs, vsini, 0.6, rows)
    ew_ca = cool * 7.0 * _g(lgt[:, 0], 3.68, 0.10)
    for lam0, share in zip(CA_TRIPLET, (0.25, 0.42, 0.33)):
        R.add_lines(depth, lam0 * obs, ew_ca * share * obs, vsini, 1.0, rows)
    ew_he = 1.2 * _sigmoid((lgt[:, 0] - 4.2) / 0.05) * cool
    for lam0 in HE_I:
        R.add_lines(depth, lam0 * obs, ew_he * obs, vsini, 1.0, rows)
    flux = cont * np.clip(1.0 - depth, 0.03, None)
    # TiO bands: a sharp head and a depression fading to the red, deeper the cooler the star
    tio = 0.8 * _sigmoid((3.59 - lgt[:, 0]) / 0.02) * cool
    m = np.flatnonzero(tio > 1e-3)
    if len(m):
        for head, weight in zip(TIO_HEADS, TIO_WEIGHTS):
            x = (lam[m] - head) / 120.0
            band = np.exp(-np.maximum(x, 0.0)) * _sigmoid(x * 30.0)
            flux[m] *= 1.0 - tio[m, None] * weight * band
    # H-alpha emission of active M dwarfs
    active = (temp < 3900) & (rng.random(n) < 0.25)
    if active.any():
        emis = np.zeros_like(flux)
        ew = np.where(active, rng.uniform(2.0, 12.0, n), 0.0)
        R.add_lines(emis, BALMER["Ha"] * obs, ew * R.cont_at(cont, BALMER["Ha"] * obs) * obs, 20.0, 0.5, rows)
        flux += emis
    # interstellar reddening (a power-law approximation of the Galactic extinction curve)
    flux *= reddening(R, rng.exponential(0.08, n))
    return flux, {"z": z, "temp": temp, "subtype": np.where(white_dwarf, 1, 0)}


def _old_population(lam_rest: np.ndarray, d4000: np.ndarray, t_old: np.ndarray) -> np.ndarray:
    cont = planck(lam_rest, t_old[:, None]) * (1 - 0.45 * np.exp(-(lam_rest - 3000.0) / 1200.0))
    step = _sigmoid((lam_rest - 4000.0) / 25.0)  # the 4,000 A break: flux blueward divided by D4000
    return cont * (step + (1 - step) / d4000[:, None])


def render_galaxies(R: Renderer, n: int, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    s = R.s
    zlo, zhi = s.z_galaxy
    z = np.clip(zlo + rng.gamma(2.5, 0.035, n), zlo, zhi)
    obs = (1 + z)
    lam = R.wave[None, :] / obs[:, None]
    passive = rng.random(n) < s.passive_fraction
    d4000 = np.where(passive, rng.normal(1.9, 0.15, n), rng.normal(1.3, 0.12, n)).clip(1.05, 2.4)
    t_old = rng.uniform(4200, 5000, n)
    cont = _old_population(lam, d4000, t_old)
    young = np.where(passive, 0.0, rng.uniform(0.15, 0.6, n))
    t_young = rng.uniform(10000, 20000, n)
    yc = planck(lam, t_young[:, None])
    ref = (np.abs(lam - 5500.0) < 50)
    norm_old = np.nanmean(np.where(ref, cont, np.nan), axis=1, keepdims=True)
    norm_young = np.nanmean(np.where(ref, yc, np.nan), axis=1, keepdims=True)
    # (5,500 A rest is always in range for z <= 0.65)
    cont = cont / norm_old * (1 - young[:, None]) + yc / norm_young * young[:, None]
    rows = np.arange(n)
    sigma_v = np.where(passive, rng.uniform(150, 300, n), rng.uniform(50, 120, n))
    depth = np.zeros((n, R.L))
    metal = np.where(passive, 1.0, 0.6)
    R.add_lines(depth, CA_K * obs, metal * rng.uniform(10, 18, n) * obs, sigma_v, 3.0, rows)
    R.add_lines(depth, CA_H * obs, metal * rng.uniform(9, 16, n) * obs, sigma_v, 3.0, rows)
    R.add_lines(depth, G_BAND * obs, metal * rng.uniform(3, 6, n) * obs, sigma_v, 7.0, rows)
    for lam0 in MG_B:
        R.add_lines(depth, lam0 * obs, metal * rng.uniform(1.5, 2.5, n) * obs, sigma_v, 0.8, rows)
    for lam0 in NA_D:
        R.add_lines(depth, lam0 * obs, metal * rng.uniform(1.0, 2.0, n) * obs, sigma_v, 0.6, rows)
    bal = np.where(passive, rng.uniform(1.0, 2.5, n), rng.uniform(3.0, 6.0, n))
    for name, lam0 in BALMER.items():
        R.add_lines(depth, lam0 * obs, bal * BALMER_SCALE[name] * obs, sigma_v, 2.0, rows)
    flux = cont * np.clip(1.0 - depth, 0.03, None)
    # nebular emission: fluxes from H-alpha's equivalent width and line ratios
    liner = passive & (rng.random(n) < 0.3)
    seyfert = ~passive & (rng.random(n) < 0.06)
    ew_ha = np.where(passive, np.where(liner, rng.uniform(0.5, 2.5, n), 0.0), rng.lognormal(np.log(25), 0.45, n))
    f_ha = ew_ha * obs * R.cont_at(flux, BALMER["Ha"] * obs)
    decrement = rng.uniform(2.86, 5.0, n)
    f_hb = f_ha / decrement
    log_n2 = np.where(liner | seyfert, rng.normal(0.05, 0.15, n), rng.normal(-0.45, 0.2, n))
    log_o3 = np.where(seyfert, rng.normal(1.0, 0.2, n), np.where(liner, rng.normal(0.1, 0.2, n),
                                                                 rng.normal(-0.25, 0.35, n)))
    sigma_gas = rng.uniform(40, 120, n)
    emis = np.zeros_like(flux)
    f_o2 = f_hb * 10 ** rng.normal(0.3, 0.2, n)
    lines = [(BALMER["Ha"], f_ha), (BALMER["Hb"], f_hb), (BALMER["Hg"], f_hb * 0.47),
             (NII[1], f_ha * 10 ** log_n2), (NII[0], f_ha * 10 ** log_n2 / 3.0),
             (OIII[1], f_hb * 10 ** log_o3), (OIII[0], f_hb * 10 ** log_o3 / 2.98),
             (OII[0], f_o2 * 0.45), (OII[1], f_o2 * 0.55),
             (SII[0], f_ha * 0.17), (SII[1], f_ha * 0.13), (OI_NEB, f_ha * np.where(liner | seyfert, 0.2, 0.04))]
    for lam0, f in lines:
        R.add_lines(emis, lam0 * obs, f, sigma_gas, 0.0, rows)
    flux += emis
    flux *= reddening(R, rng.exponential(0.03, n))  # Galactic, in the observed frame
    return flux, {"z": z, "temp": np.zeros(n), "subtype": np.where(passive, 0, np.where(seyfert, 2, 1))}


def _qso_redshifts(n: int, rng: np.random.Generator, lo: float, hi: float) -> np.ndarray:
    """Broad peak near z ~ 1.5 and a flat tail over the whole range (a magnitude-limited QSO survey's shape)."""
    if hi - lo < 1e-6:
        return np.full(n, lo)
    z = rng.normal(1.4, 0.75, n)
    flat = rng.random(n) < 0.2
    z = np.where(flat, rng.uniform(lo, hi, n), z)
    bad = (z < lo) | (z > hi)
    while bad.any():
        z[bad] = rng.normal(1.4, 0.75, bad.sum())
        bad = (z < lo) | (z > hi)
    return z


def render_qsos(R: Renderer, n: int, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    s = R.s
    z = _qso_redshifts(n, rng, *s.z_qso)
    obs = 1 + z
    lam = R.wave[None, :] / obs[:, None]
    a_blue = rng.normal(-0.44, 0.3, n)[:, None]
    a_red = rng.normal(-2.45, 0.3, n)[:, None]
    # f_nu ~ nu^a  =>  f_lambda ~ lambda^-(2+a); continuous at 5,000 A rest
    x = lam / 5000.0
    cont = np.where(x < 1, x ** (-(2 + a_blue)), x ** (-(2 + a_red)))
    cont = cont * (1 + rng.uniform(0.1, 0.4, n)[:, None] * _g(lam, 3000.0, 450.0))  # small blue bump (Fe II, Balmer)
    host = np.where(z < 0.5, rng.uniform(0.0, 0.4, n), 0.0)
    d4000_host, t_host = rng.normal(1.8, 0.15, n).clip(1.3, 2.3), rng.uniform(4200, 5000, n)
    m = np.flatnonzero(host > 0)
    if len(m):  # host galaxy light at low z, a share `host` of the continuum at 5,500 A rest (in range for z < 0.65)
        old = _old_population(lam[m], d4000_host[m], t_host[m])
        i5 = np.abs(lam[m] - 5500.0) < 60
        ratio = (np.where(i5, cont[m], 0).sum(1) / np.where(i5, old, 0).sum(1).clip(1e-30))
        cont[m] = cont[m] * (1 - host[m, None]) + old * (ratio * host[m])[:, None]
    rows = np.arange(n)
    emis = np.zeros((n, R.L))
    strength = rng.lognormal(0.0, 0.25, n)  # one factor for all lines of a QSO, then each line's own scatter
    for lam0, ew, (f_lo, f_hi) in QSO_BROAD:
        lam_obs = lam0 * obs
        ew_obs = ew * strength * rng.lognormal(0.0, 0.2, n) * obs
        sigma = rng.uniform(f_lo, f_hi, n) / 2.3548
        R.add_lines(emis, lam_obs, ew_obs * R.cont_at(cont, lam_obs), sigma, 0.0, rows)
    for lam0, ew in QSO_NARROW:
        lam_obs = lam0 * obs
        R.add_lines(emis, lam_obs, ew * rng.lognormal(0.0, 0.35, n) * obs * R.cont_at(cont, lam_obs),
                    rng.uniform(150, 350, n), 0.0, rows)
    flux = cont + emis
    # Ly-alpha forest blueward of Ly-alpha (mean optical depth from Faucher-Giguere et al. 2008), lognormal field
    forest = lam < LYA
    if forest.any():
        z_abs = R.wave[None, :] / LYA - 1
        tau = 0.0018 * (1 + z_abs) ** 3.92
        tau = tau * np.where(lam < LYB, 1.5, 1.0)
        field_ = rng.normal(0.0, 1.0, (n, R.L))
        k = 3
        field_ = np.cumsum(field_, axis=1)
        field_ = (field_[:, k:] - field_[:, :-k]) / np.sqrt(k)
        field_ = np.pad(field_, ((0, 0), (k, 0)))
        trans = np.exp(-tau * np.exp(0.8 * field_ - 0.32))
        flux = np.where(forest, flux * trans, flux)
        tau_ll = rng.exponential(1.5, n)[:, None]
        flux = np.where(lam < LYLIMIT, flux * np.exp(-tau_ll), flux)
    flux *= reddening(R, rng.exponential(0.03, n))
    return flux, {"z": z, "temp": np.zeros(n), "subtype": np.zeros(n, dtype=np.int64)}


RENDER = {"star": render_stars, "galaxy": render_galaxies, "qso": render_qsos}


# ---- observing ---------------------------------------------------------------------------------------------------------
def _magnitudes(n: int, rng: np.random.Generator, lo: float, hi: float, slope: float) -> np.ndarray:
    """Magnitudes with dN/dm ~ 10^(slope m) on [lo, hi] (counts rise to the survey's faint limit)."""
    a, b = 10 ** (slope * lo), 10 ** (slope * hi)
    return np.log10(a + rng.random(n) * (b - a)) / slope


def observe(R: Renderer, flux: np.ndarray, kind: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Scale to a magnitude, add calibration and telluric imperfections, then Poisson noise of source plus sky.
    Returns the delivered spectrum, its noise sigma and its true S/N in the g and r bands."""
    s, n = R.s, len(flux)
    mag = _magnitudes(n, rng, *s.mag_range[kind], s.mag_slope[kind])
    level = s.flux_at_16mag * 10 ** (-0.4 * (mag - 16.0))
    ref = np.median(flux[:, R.ref_band], axis=1)
    ref = np.where(ref > 0, ref, np.maximum(flux.mean(axis=1), 1e-30))
    signal = flux * (level / ref)[:, None]
    # flux calibration: a smooth wiggle and a mismatch between the arms
    x = (R.wave[None, :] - 6400.0) / 2700.0
    wiggle = 1 + rng.normal(0, 0.03, (n, 1)) * x + rng.normal(0, 0.02, (n, 1)) * (2 * x * x - 1)
    arm = np.where(R.blue_arm[None, :], 1.0, 1 + rng.normal(0, 0.03, (n, 1)))
    signal = signal * wiggle * arm
    for lo, hi, depth in TELLURIC:  # telluric bands, corrected imperfectly
        band = (R.wave >= lo) & (R.wave <= hi)
        signal[:, band] *= 1 - depth * rng.uniform(0.0, 0.3, (n, 1))
    moon = rng.uniform(1.0, s.moon_max, (n, 1))
    sky = (R.sky_cont + R.sky_lines)[None, :] * moon
    rate = s.exposure * 10 ** rng.normal(0, s.conditions_dex, (n, 1)) * R.throughput[None, :]
    sigma = np.sqrt((np.maximum(signal, 0) + sky) / rate)
    noisy = signal + sigma * rng.standard_normal(signal.shape, dtype=np.float32)
    noisy += rng.normal(0, 0.03, (n, 1)) * R.sky_lines[None, :] * moon  # sky-subtraction residuals
    snr = signal / sigma
    return {"flux": noisy, "sigma": sigma, "signal": signal, "mag": mag,
            "snr_g": np.median(snr[:, R.g_band], axis=1), "snr_r": np.median(snr[:, R.r_band], axis=1),
            "moon": moon[:, 0]}


def apply_defects(R: Renderer, obs: dict, rows: np.ndarray, severe: bool, rng: np.random.Generator) -> np.ndarray:
    """Spoil the spectra `rows` in place; returns each one's defect code (index into DEFECTS)."""
    flux, sigma = obs["flux"], obs["sigma"]
    codes = np.zeros(len(rows), dtype=np.int64)
    for j, i in enumerate(rows):
        L = R.L
        if severe:
            kind = int(rng.integers(1, len(DEFECTS)))
            codes[j] = kind
            if kind == 1:  # a dead arm: zeros, or noise about zero
                arm = R.blue_arm if rng.random() < 0.5 else ~R.blue_arm
                flux[i, arm] = 0.0 if rng.random() < 0.5 else rng.normal(0, np.median(sigma[i, arm]), arm.sum())
            elif kind == 2:  # wide gaps of zeros
                for _ in range(int(rng.integers(1, 4))):
                    width = int(rng.integers(100, 600))
                    start = int(rng.integers(0, L - width))
                    flux[i, start : start + width] = 0.0
            elif kind == 3:  # cosmic rays and hot pixels
                k = int(rng.integers(L // 100, L // 25))
                at = rng.choice(L, k, replace=False)
                scale = np.abs(np.median(flux[i])) + np.median(sigma[i])
                flux[i, at] += rng.choice([-1, 1], k) * rng.uniform(3, 30, k) * scale
            elif kind == 4:  # failed sky subtraction
                flux[i] += rng.choice([-1, 1]) * rng.uniform(0.5, 2.0) * R.sky_lines * obs["moon"][i] * 3
            else:  # failed flux calibration: one arm off by a large factor, or a steep tilt
                if rng.random() < 0.5:
                    flux[i, ~R.blue_arm] *= rng.choice([rng.uniform(0.15, 0.4), rng.uniform(2.5, 6.0)])
                else:
                    x = (R.wave - 6400.0) / 2700.0
                    flux[i] *= np.clip(1 + rng.choice([-1, 1]) * rng.uniform(1.0, 3.0) * x, 0.05, None)
        else:  # mild: a few spikes or a short gap; the pipeline still classifies it
            if rng.random() < 0.7:
                k = int(rng.integers(1, 6))
                at = rng.choice(L, k, replace=False)
                flux[i, at] += rng.uniform(3, 15, k) * (np.abs(np.median(flux[i])) + np.median(sigma[i]))
            else:
                width = int(rng.integers(3, 15))
                start = int(rng.integers(0, L - width))
                flux[i, start : start + width] = 0.0
    return codes


# ---- the survey ------------------------------------------------------------------------------------------------------
def simulate(wave: np.ndarray, counts: dict[str, int], seed: int, settings: SimSettings | None = None,
             ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """`counts[label]` spectra of each label (CLASSES), shuffled: flux (N, L) float32, labels (N,) int64 (index into
    CLASSES), and per-spectrum facts (true type, S/N, redshift, magnitude, defect, ...) for breakdowns."""
    s = settings or SimSettings()
    R = Renderer(np.asarray(wave, dtype=np.float64), s)
    rng = np.random.default_rng(seed)
    t0 = time.monotonic()
    unknown = counts.get("unknown", 0)
    n_defect = int(round(unknown * s.unknown_defective))
    share = np.array([s.unknown_types.get(t, 0.0) for t in TRUE_TYPES], dtype=np.float64)
    share = share / share.sum()
    # unknowns from failed identification, split by true type (largest remainder)
    raw = share * (unknown - n_defect)
    low = np.floor(raw).astype(int)
    low[np.argsort(raw - low)[::-1][: (unknown - n_defect) - low.sum()]] += 1
    want_unknown = dict(zip(TRUE_TYPES, low.tolist()))
    parts: list[dict[str, np.ndarray]] = []
    drawn: dict[str, int] = {}
    for kind in TRUE_TYPES:
        need = {"id": counts.get(kind, 0), "unknown": want_unknown[kind]}
        got = {"id": 0, "unknown": 0}
        got_all = {"id": 0, "unknown": 0}
        tries = seen = 0
        while got["id"] < need["id"] or got["unknown"] < need["unknown"]:
            tries += 1
            if tries > 2000:
                raise RuntimeError(f"simulator: cannot draw {need} {kind} spectra (identified, unknown); the "
                                   f"identification threshold id_snr.{kind}={s.id_snr[kind]} leaves too few of one")
            # size the draw to what is missing, at the identification rate seen so far
            rate = {key: (got_all[key] + 1) / (seen + 2) for key in got_all}
            short = max((need[k] - got[k]) / rate[k] for k in need if need[k] > got[k])
            part = _draw(R, kind, int(min(s.chunk, max(64, 1.1 * short + 32))), rng)
            seen += len(part["flux"])
            ident = part["snr_pipe"] >= s.id_snr[kind]
            got_all["id"] += int(ident.sum())
            got_all["unknown"] += int((~ident).sum())
            for key, mask in (("id", ident), ("unknown", ~ident)):
                take = np.flatnonzero(mask)[: need[key] - got[key]]
                if len(take):
                    sel = {k: v[take] for k, v in part.items()}
                    sel["label"] = np.full(len(take), CLASSES.index(kind if key == "id" else "unknown"))
                    parts.append(sel)
                    got[key] += len(take)
        drawn[kind] = seen
    # defective spectra: any true type, any S/N, in the survey's proportions of true types
    if n_defect:
        pop = np.array([counts.get(t, 0) + want_unknown[t] for t in TRUE_TYPES], dtype=np.float64) + 1e-9
        kinds = rng.choice(len(TRUE_TYPES), size=n_defect, p=pop / pop.sum())
        for k, kind in enumerate(TRUE_TYPES):
            m = int((kinds == k).sum())
            while m > 0:
                part = _draw(R, kind, min(m, s.chunk), rng, severe=True)
                part["label"] = np.full(len(part["flux"]), CLASSES.index("unknown"))
                parts.append(part)
                m -= len(part["flux"])
    merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    order = rng.permutation(len(merged["label"]))
    flux = np.ascontiguousarray(merged.pop("flux")[order])
    labels = merged.pop("label")[order].astype(np.int64)
    meta = {k: v[order] for k, v in merged.items()}
    rates = ", ".join(f"{k} {drawn[k]:,} drawn" for k in drawn)
    log.info(f"simulated {len(labels):,} SYNTHETIC spectra in {time.monotonic() - t0:.1f}s ({rates})")
    return flux, labels, meta


def _draw(R: Renderer, kind: str, n: int, rng: np.random.Generator, severe: bool = False) -> dict[str, np.ndarray]:
    """n spectra of one true type: rendered, observed, (severely or mildly) spoiled; with their facts."""
    s = R.s
    flux, facts = RENDER[kind](R, n, rng)
    obs = observe(R, flux, kind, rng)
    defect = np.zeros(n, dtype=np.int64)
    if severe:
        defect = apply_defects(R, obs, np.arange(n), True, rng)
    else:
        mild = np.flatnonzero(rng.random(n) < s.mild_defects)
        apply_defects(R, obs, mild, False, rng)
    snr_pipe = obs["snr_g"] * 10 ** rng.normal(0, s.snr_scatter_dex, n)
    return {"flux": obs["flux"].astype(np.float32), "true_type": np.full(n, TRUE_TYPES.index(kind)),
            "snr_g": obs["snr_g"].astype(np.float32), "snr_r": obs["snr_r"].astype(np.float32),
            "snr_pipe": snr_pipe.astype(np.float32), "mag": obs["mag"].astype(np.float32),
            "z": facts["z"].astype(np.float32), "temp": facts["temp"].astype(np.float32),
            "subtype": facts["subtype"].astype(np.int64), "defect": defect}


def settings_dict(s: SimSettings) -> dict[str, Any]:
    return {f.name: getattr(s, f.name) for f in fields(s)}
