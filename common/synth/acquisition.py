"""Acquisition domains: projected tissue density -> stored DICOM pixel values.

- film (DDSM-like): exposure through an H&D characteristic curve to optical density,
  film grain, digitiser blur, 16-bit values with dense tissue bright (MONOCHROME2),
  bright labels / tape / unexposed film edges.
- ffdm (INbreast-like): quantum noise on the detector signal, log transform, vendor
  tone curve with periphery equalisation, 12/14-bit values, MONOCHROME1 for some
  vendors/files, and a VOI window in the header.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from mammo_fl.common.synth.profiles import VendorProfile
from mammo_fl.common.synth.texture import power_law_noise

FILM_DMIN, FILM_DMAX, SCAN_DMAX = 0.18, 3.6, 3.5


@dataclass
class Acquired:
    pixels: np.ndarray  # uint16 stored values
    bits_stored: int
    photometric: str  # MONOCHROME1 | MONOCHROME2
    window: tuple[float, float] | None  # (center, width) in stored units, FFDM only


def acquire(
    density: np.ndarray,
    breast: np.ndarray,
    thickness: np.ndarray,
    profile: VendorProfile,
    rng: np.random.Generator,
    window_reference: np.ndarray | None = None,
) -> Acquired:
    """`window_reference`: the lesion-free density, from which FFDM auto-windowing is set, so
    that a lesion never shifts the VOI window (a global cue a classifier could exploit)."""
    scale = density.shape[0] / 1152.0
    if profile.blur_sigma_px * scale > 0.3:
        density = ndimage.gaussian_filter(density, profile.blur_sigma_px * scale)
    if profile.domain == "film":
        return _film(density, breast, profile, rng)
    reference = density if window_reference is None else window_reference
    return _ffdm(density, breast, thickness, profile, rng, reference)


def _correlated_noise(shape: tuple[int, int], sigma: float, rng: np.random.Generator) -> np.ndarray:
    noise = rng.standard_normal(shape, dtype=np.float32)
    if sigma > 0.3:
        noise = ndimage.gaussian_filter(noise, sigma)
        noise /= max(float(noise.std()), 1e-6)
    return noise


def _film(density: np.ndarray, breast: np.ndarray, profile: VendorProfile, rng: np.random.Generator) -> Acquired:
    h, w = density.shape
    log_exposure = -profile.attenuation * density * np.log10(np.e)  # 0 = unattenuated beam
    speed_point = -0.45 - profile.tone_offset
    od = FILM_DMIN + (FILM_DMAX - FILM_DMIN) / (1.0 + np.exp(-profile.tone_gamma * (log_exposure - speed_point)))
    od += profile.noise * _correlated_noise((h, w), 0.7 * h / 1152.0, rng)  # film grain
    od += 0.04 * power_law_noise((h, w), 3.5, rng)  # uneven development / scanner shading
    value = np.clip(1.0 - od / SCAN_DMAX, 0.0, 1.0)
    _film_artefacts(value, breast, profile, rng)
    pixels = np.round(np.clip(value, 0.0, 1.0) * 65535.0).astype(np.uint16)
    return Acquired(pixels, 16, "MONOCHROME2", None)


def _film_artefacts(value: np.ndarray, breast: np.ndarray, profile: VendorProfile, rng: np.random.Generator) -> None:
    """Labels, tape and film edges, placed away from the breast and independent of any finding."""
    h, w = value.shape
    chest_left = bool(breast[:, : w // 8].sum() > breast[:, -w // 8 :].sum())
    if rng.random() < profile.label_prob:
        lh, lw = int(h * rng.uniform(0.05, 0.09)), int(w * rng.uniform(0.14, 0.24))
        for _ in range(6):
            y = int(rng.integers(0, max(h - lh, 1)))
            x = (w - lw - int(rng.integers(2, 12))) if chest_left else int(rng.integers(2, 12))
            if breast[y : y + lh, x : x + lw].mean() < 0.02:
                value[y : y + lh, x : x + lw] = rng.uniform(0.82, 0.95)
                for _ in range(int(rng.integers(4, 9))):  # printed characters
                    cy, cx = int(rng.integers(1, max(lh - 4, 2))), int(rng.integers(1, max(lw - 4, 2)))
                    ch, cw = max(lh // 5, 1), max(lw // 14, 1)
                    value[y + cy : y + cy + ch, x + cx : x + cx + cw] = rng.uniform(0.2, 0.45)
                break
    if rng.random() < profile.tape_prob:
        band = int(h * rng.uniform(0.04, 0.08))
        y = int(rng.integers(0, h // 6)) if rng.random() < 0.5 else int(rng.integers(h - h // 6 - band, h - band))
        ramp = np.sin(np.linspace(0, np.pi, band))[:, None] ** 0.3
        value[y : y + band] = np.clip(value[y : y + band] + rng.uniform(0.08, 0.16) * ramp, 0, 1)
    if rng.random() < profile.edge_prob:
        ew = max(int(w * rng.uniform(0.008, 0.025)), 1)
        if rng.random() < 0.5:
            sl = (slice(None), slice(w - ew, w)) if chest_left else (slice(None), slice(0, ew))
        else:
            sl = (slice(0, ew), slice(None)) if rng.random() < 0.5 else (slice(h - ew, h), slice(None))
        value[sl] = rng.uniform(0.88, 0.97)


def _tone(log_signal: np.ndarray, profile: VendorProfile) -> np.ndarray:
    x = np.clip(log_signal / (0.95 * profile.attenuation), 0.0, 1.0)
    shown = x**profile.tone_gamma
    return np.clip(shown + profile.tone_offset * 2.0 * shown * (1.0 - shown), 0.0, 1.0)


def _ffdm(
    density: np.ndarray,
    breast: np.ndarray,
    thickness: np.ndarray,
    profile: VendorProfile,
    rng: np.random.Generator,
    reference: np.ndarray,
) -> Acquired:
    h, w = density.shape
    k = profile.attenuation
    signal = np.exp(-k * density)
    signal = signal + profile.noise * np.sqrt(signal) * _correlated_noise((h, w), 0.5 * h / 1152.0, rng)
    # Thickness equalisation: lift the thin periphery so the skin line stays visible.
    equalise = profile.periphery_equalisation * 0.3 * k * (1.0 - thickness) * breast
    shown = _tone(-np.log(np.clip(signal, 1e-4, None)) + equalise, profile)
    shown[~breast] *= 0.15  # processed background is near black
    maxv = float(2**profile.bits_stored - 1)
    stored = np.round(shown * maxv)
    ref_shown = _tone(k * reference + equalise, profile) * maxv
    inside = ref_shown[breast] if breast.any() else ref_shown.ravel()
    lo, hi = np.percentile(inside, [0.5, 99.8])
    center, width = (lo + hi) / 2.0, max((hi - lo) * 1.15, 16.0)
    photometric = "MONOCHROME1" if rng.random() < profile.mono1_fraction else "MONOCHROME2"
    if photometric == "MONOCHROME1":
        stored = maxv - stored
        center = maxv - center
    return Acquired(stored.astype(np.uint16), profile.bits_stored, photometric, (float(round(center)), float(round(width))))
