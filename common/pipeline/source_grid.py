"""Coordinates between the model grid (the cached, resized image) and the stored DICOM grid.

The cache records each image's `Geometry`: crop box in source pixels, horizontal flip after the
crop, and the extent of the resized content at the top-left of the model image (the rest is zero
padding in crop mode). The resize is `interpolate(..., align_corners=False)`, so pixel centres map as
``u_model = (u_cut + 0.5) * resized / cut - 0.5``. Pixel ``i`` is centred at coordinate ``i`` on both grids.
"""

from __future__ import annotations

import numpy as np

from mammo_fl.common.imaging.geometry import Geometry


def _cut_size(g: Geometry) -> tuple[int, int]:
    y0, y1, x0, x1 = g.crop
    return y1 - y0, x1 - x0


def model_to_source(ys: np.ndarray, xs: np.ndarray, g: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """Model-grid coordinates -> (row, col) coordinates on the stored DICOM grid (floats)."""
    ch, cw = _cut_size(g)
    rows = (np.asarray(ys, dtype=np.float64) + 0.5) * ch / g.resized[0] - 0.5
    cols = (np.asarray(xs, dtype=np.float64) + 0.5) * cw / g.resized[1] - 0.5
    if g.flip:
        cols = (cw - 1) - cols
    return rows + g.crop[0], cols + g.crop[2]


def source_to_model(rows: np.ndarray, cols: np.ndarray, g: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """Stored-DICOM (row, col) coordinates -> model-grid coordinates (floats; outside the crop too)."""
    ch, cw = _cut_size(g)
    r = np.asarray(rows, dtype=np.float64) - g.crop[0]
    c = np.asarray(cols, dtype=np.float64) - g.crop[2]
    if g.flip:
        c = (cw - 1) - c
    return (r + 0.5) * g.resized[0] / ch - 0.5, (c + 0.5) * g.resized[1] / cw - 0.5


def inside_crop(rows: np.ndarray, cols: np.ndarray, g: Geometry) -> np.ndarray:
    """Which source coordinates lie in the cropped part the model saw."""
    y0, y1, x0, x1 = g.crop
    rows, cols = np.asarray(rows), np.asarray(cols)
    return (rows > y0 - 0.5) & (rows < y1 - 0.5) & (cols > x0 - 0.5) & (cols < x1 - 0.5)


def content_mask(g: Geometry) -> np.ndarray:
    """bool (model grid): the resized image content, not the zero padding of crop mode."""
    mask = np.zeros(g.out_shape, dtype=bool)
    mask[: g.resized[0], : g.resized[1]] = True
    return mask


def source_pixel(y: float, x: float, g: Geometry) -> tuple[int, int]:
    """The stored-DICOM pixel (row, col) holding a model-grid point, clipped to the image."""
    row, col = model_to_source(np.array(y), np.array(x), g)
    return (int(np.clip(np.rint(row), 0, g.src_shape[0] - 1)), int(np.clip(np.rint(col), 0, g.src_shape[1] - 1)))
