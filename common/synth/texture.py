"""Fibroglandular texture: power-law (1/f^beta) noise and radial trabecular strands.

Mammographic anatomical background has a power spectrum close to 1/f^beta with
beta ~ 3; density classes shift how much of the breast is glandular.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from mammo_fl.common.synth.shapes import BreastGeometry

# Bias of the glandular-fraction logit per ACR density class (1 fatty .. 4 extremely dense).
DENSITY_BIAS = {1: -2.2, 2: -1.1, 3: 0.0, 4: 1.1}


def upsample(a: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear 2x upsampling cropped to `shape` (much faster than ndimage.zoom)."""
    a = a.astype(np.float32, copy=False)
    h, w = a.shape
    out = np.empty((2 * h, 2 * w), np.float32)
    out[0::2, 0::2] = a
    out[0::2, 1:-1:2] = 0.5 * (a[:, :-1] + a[:, 1:])
    out[0::2, -1] = a[:, -1]
    out[1:-1:2] = 0.5 * (out[0:-2:2] + out[2::2])
    out[-1] = out[-2]
    return out[: shape[0], : shape[1]]


def power_law_noise(
    shape: tuple[int, int], beta: float, rng: np.random.Generator, stretch: tuple[float, float] = (1.0, 1.0)
) -> np.ndarray:
    """Zero-mean, unit-std Gaussian field with power spectrum 1/f^beta (via FFT).

    `stretch` = (sy, sx) > 1 elongates structures along that axis.
    """
    h, w = shape
    fy = np.fft.fftfreq(h)[:, None] * stretch[0]
    fx = np.fft.rfftfreq(w)[None, :] * stretch[1]
    f = np.sqrt(fy * fy + fx * fx)
    f[0, 0] = 1.0
    amp = f ** (-beta / 2.0)
    amp[0, 0] = 0.0
    white = rng.standard_normal((h, w), dtype=np.float32)
    field = np.fft.irfft2(np.fft.rfft2(white) * amp, s=(h, w)).astype(np.float32)
    field -= field.mean()
    std = field.std()
    return field / std if std > 0 else field


def radial_strands(geometry: BreastGeometry, rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Ducts and Cooper's ligaments converging on the nipple: noise sampled in polar coords."""
    h, w = shape
    nx, ny = geometry.nipple
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r = np.hypot(xx - nx, yy - ny) / max(h, w)
    phi = np.arctan2(yy - ny, xx - nx)
    # Elongated along r (axis 0 of the polar grid), fine across phi.
    polar = power_law_noise((128, 512), 2.6, rng, stretch=(0.15, 1.0))
    coords = np.stack([r * 127.0 / 1.5, (phi + np.pi) / (2 * np.pi) * 511.0])
    return ndimage.map_coordinates(polar, coords, order=1, mode="wrap").astype(np.float32)


def ridges(field: np.ndarray, width: float = 0.25) -> np.ndarray:
    """Thin line network along the zero crossings of a smooth field (0..1)."""
    return np.exp(-((field / width) ** 2)).astype(np.float32)


def glandular_fraction(
    geometry: BreastGeometry, density: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Fraction of fibroglandular tissue (0 fat .. 1 gland) inside the breast, and the strand field."""
    shape = geometry.mask.shape
    h, w = shape
    small = (-(-h // 2), -(-w // 2))  # low-frequency blobs need no full resolution
    blobs = upsample(power_law_noise(small, 3.2, rng), (h, w))
    lobules = power_law_noise(shape, 2.2, rng)  # fat lobules and fine parenchymal detail
    strands = radial_strands(geometry, rng, shape)
    # Gland sits behind the nipple and away from the skin (subcutaneous fat layer).
    cx, cy = geometry.center
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    central = np.exp(-(((xx - cx) / (0.55 * geometry.depth)) ** 2 + ((yy - cy) / (0.42 * h)) ** 2))
    prior = 2.2 * central - 3.5 * np.clip(geometry.rho - 0.8, 0, None) / 0.2
    logit = 1.3 * blobs + 0.6 * lobules + 0.4 * strands + prior + DENSITY_BIAS[density] - 0.6
    frac = 1.0 / (1.0 + np.exp(-1.1 * logit))
    return (frac * geometry.mask).astype(np.float32), strands
