"""Unannotated incidental findings present in many normal mammograms.

Scattered punctate calcifications, vascular calcifications and (MLO) axillary lymph
nodes appear independently of the label. Without them "any very bright speck" would
betray an annotated lesion through the image histogram alone.
"""

from __future__ import annotations

import numpy as np

from mammo_fl.common.synth.shapes import BreastGeometry


def _inside_points(geometry: BreastGeometry, n: int, rng: np.random.Generator, min_thickness: float = 0.5):
    ys, xs = np.nonzero((geometry.thickness > min_thickness) & (geometry.pectoral < 0.05))
    if len(ys) == 0:
        return np.zeros((0, 2))
    idx = rng.integers(0, len(ys), n)
    return np.stack([xs[idx], ys[idx]], axis=1).astype(np.float64)


def _stamp(density: np.ndarray, cx: float, cy: float, radius: float, value: float, lucent: float = 0.0) -> None:
    """Add a soft disc (optionally with a darker centre) in place."""
    h, w = density.shape
    r = int(np.ceil(radius * 2 + 2))
    y0, y1, x0, x1 = max(int(cy) - r, 0), min(int(cy) + r + 1, h), max(int(cx) - r, 0), min(int(cx) + r + 1, w)
    if y0 >= y1 or x0 >= x1:
        return
    yy, xx = np.mgrid[y0:y1, x0:x1]
    s = np.hypot(xx - cx, yy - cy) / max(radius, 0.5)
    blob = 1.0 / (1.0 + np.exp(np.clip((s - 1.0) / 0.18, -50, 50)))
    if lucent:
        blob = blob * (1.0 - lucent * np.exp(-((s / 0.6) ** 2)))
    np.maximum(density[y0:y1, x0:x1], value * blob, out=density[y0:y1, x0:x1])


def add_incidental_findings(
    density: np.ndarray, geometry: BreastGeometry, view: str, rng: np.random.Generator, conspicuity: float = 1.0
) -> None:
    """Add label-independent benign findings to `density` in place (never annotated)."""
    w = density.shape[1]
    extra = np.zeros_like(density)
    if rng.random() < 0.55:  # scattered punctate / round benign calcifications
        n = int(rng.integers(1, 8))
        for x, y in _inside_points(geometry, n, rng):
            _stamp(extra, x, y, w * rng.uniform(0.0025, 0.007), rng.uniform(0.25, 0.5) * conspicuity)
    if rng.random() < 0.25:  # vascular calcification: tram-track along a smooth curve
        pts = _inside_points(geometry, 1, rng)
        if len(pts):
            x, y = pts[0]
            angle, length = rng.uniform(0, 2 * np.pi), w * rng.uniform(0.12, 0.3)
            steps = int(length / max(w * 0.002, 0.5))
            curve = np.cumsum(rng.normal(0, 0.04, steps)) + angle
            value = rng.uniform(0.08, 0.16) * conspicuity
            visible = rng.random(steps) < 0.75  # calcified wall is patchy
            for a, show in zip(curve, visible):
                x, y = x + np.cos(a) * w * 0.002, y + np.sin(a) * w * 0.002
                if not show:
                    continue
                nx, ny = -np.sin(a) * w * 0.0025, np.cos(a) * w * 0.0025
                v = value * rng.uniform(0.6, 1.0)
                _stamp(extra, x + nx, y + ny, w * 0.0014, v)
                _stamp(extra, x - nx, y - ny, w * 0.0014, v)
    if view == "MLO" and rng.random() < 0.5:  # axillary lymph node near the pectoral edge
        ys, xs = np.nonzero((geometry.pectoral > 0.05) & (geometry.pectoral < 0.5) & geometry.mask)
        if len(ys):
            i = int(rng.integers(len(ys)))
            _stamp(extra, float(xs[i]), float(ys[i]), w * rng.uniform(0.015, 0.03), rng.uniform(0.1, 0.18), lucent=0.6)
    density += extra * geometry.mask
