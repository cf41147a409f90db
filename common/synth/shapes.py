"""Breast outline, compressed-thickness profile, skin line and (MLO) pectoral muscle.

Everything is drawn in a canonical orientation with the chest wall on the left
(x = 0, the way a LEFT breast is displayed); `render` mirrors RIGHT breasts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class BreastGeometry:
    mask: np.ndarray  # bool (H, W): inside the skin line
    thickness: np.ndarray  # float32 (H, W): 0 outside, ~1 in the compressed plateau
    rho: np.ndarray  # float32 (H, W): normalised distance to the skin (0 chest centre, 1 skin)
    pectoral: np.ndarray  # float32 (H, W): 0..1 soft pectoral-muscle map (zeros for CC)
    nipple: tuple[float, float]  # (x, y) in pixels
    center: tuple[float, float]  # (x, y) of the glandular centre
    depth: float  # chest wall to nipple, pixels (converts rho to pixels near the skin)


def _angular_wobble(theta: np.ndarray, rng: np.random.Generator, amplitude: float, harmonics: int = 5) -> np.ndarray:
    """Smooth random radial perturbation 1 + sum_k a_k cos(k theta + phi_k) (via a 1-D table)."""
    table_theta = np.linspace(-np.pi, np.pi, 1025)
    table = np.ones_like(table_theta)
    for k in range(2, 2 + harmonics):
        table += amplitude / k * rng.normal() * np.cos(k * table_theta + rng.uniform(0, 2 * np.pi))
    return np.interp(theta, table_theta, table).astype(np.float32)


def breast_geometry(height: int, width: int, view: str, rng: np.random.Generator) -> BreastGeometry:
    """Random breast shape for one view (CC or MLO) at (height, width)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    depth = width * rng.uniform(0.6, 0.88)  # chest wall to nipple
    if view == "MLO":
        yc = height * rng.uniform(0.52, 0.6)
        half_low = height * rng.uniform(0.36, 0.42)  # down to the inframammary fold
        half_high = yc * rng.uniform(1.05, 1.25)  # axillary tail reaches the top edge
        tilt = np.deg2rad(rng.uniform(8.0, 18.0))  # nipple points slightly upward
        power = rng.uniform(1.9, 2.5)  # superellipse exponent: rounder or squarer outline
    else:
        yc = height * rng.uniform(0.45, 0.55)
        half_low = half_high = height * rng.uniform(0.34, 0.44)
        tilt = np.deg2rad(rng.uniform(-4.0, 4.0))
        power = rng.uniform(1.7, 2.2)
    # Rotate coordinates about the chest-wall centre so the breast axis tilts.
    dy0 = yy - yc
    u = xx * np.cos(tilt) - dy0 * np.sin(tilt)
    v = xx * np.sin(tilt) + dy0 * np.cos(tilt)
    half = np.where(v < 0, half_high, half_low).astype(np.float32)
    un = np.clip(u, 0, None) / depth
    vn = np.abs(v) / half
    theta = np.arctan2(vn, un)
    rho = (un**power + vn**power) ** (1.0 / power) / _angular_wobble(theta, rng, 0.06)
    rho = rho.astype(np.float32)
    mask = rho < 1.0
    # Compressed breast: flat plateau, rounded fall-off within the last ~15-25% to the skin.
    edge = rng.uniform(4.0, 7.0)
    thickness = np.sqrt(np.clip(1.0 - rho**edge, 0.0, 1.0)).astype(np.float32)
    thickness[~mask] = 0.0
    nipple = (float(depth * np.cos(tilt)), float(yc + depth * np.sin(tilt)))
    center = (float(depth * 0.45 * np.cos(tilt)), float(yc + depth * 0.45 * np.sin(tilt)))
    pectoral = np.zeros((height, width), np.float32)
    if view == "MLO":
        pectoral = _pectoral(yy, xx, height, width, rng) * mask
    return BreastGeometry(mask, thickness, rho, pectoral.astype(np.float32), nipple, center, float(depth))


def _pectoral(yy: np.ndarray, xx: np.ndarray, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Soft triangle in the upper chest-wall corner with a slightly convex front edge."""
    top_width = width * rng.uniform(0.18, 0.34)
    length = height * rng.uniform(0.42, 0.68)
    bulge = rng.uniform(0.6, 1.0)  # < 1: convex edge
    t = np.clip(yy / length, 0.0, 1.0)
    edge_x = top_width * (1.0 - t) ** bulge
    softness = width * 0.006
    inside = 1.0 / (1.0 + np.exp(np.clip((xx - edge_x) / softness, -50, 50)))
    inside[yy > length] = 0.0
    return inside


def skin_line(geometry: BreastGeometry, width_px: float) -> np.ndarray:
    """Thin bright band just inside the skin (thickened skin seen tangentially)."""
    dist_px = (1.0 - geometry.rho) * geometry.depth
    band = np.exp(-((dist_px / max(width_px, 0.5)) ** 2))
    return (band * geometry.mask).astype(np.float32)
