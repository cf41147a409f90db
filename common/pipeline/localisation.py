"""Does the heatmap point at the lesion? Peak location, ROI hit, heatmap mass in ROIs, pointing game.

The peak is the centre of the map's hottest cell (cells centred on crop mode's zero padding
excluded), reported on the model grid and on the stored DICOM grid; taking it from the cells, not from
the resampled pixel map, keeps it off the edge strips where resampling holds the outer cells constant. An image's *target* ROIs are its malignant
ROIs when it is malignant, otherwise all of its ROIs (did the model look at the benign finding?).
The pointing game (Zhang et al. 2016) is the share of malignant images with a malignant ROI whose
peak falls inside one; the mass is the share of the map's total inside the target ROIs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mammo_fl.common.imaging.cache import Geometry
from mammo_fl.common.pipeline.cell_grid import CellGrid, cells_to_pixels
from mammo_fl.common.pipeline.source_grid import content_mask, source_pixel


@dataclass(frozen=True)
class Localisation:
    peak: tuple[int, int]  # (y, x) on the model grid
    source: tuple[int, int]  # (row, col) on the stored DICOM grid
    value: float  # the map at the peak
    in_roi: bool | None  # None: the image has no target ROI
    roi_mass: float | None


def peak_of(cell_map: np.ndarray, grid: CellGrid, content: np.ndarray) -> tuple[int, int, float]:
    """(y, x, value): model pixel at the centre of the hottest cell centred inside `content` (first on ties)."""
    rows, cols = np.meshgrid(np.arange(cell_map.shape[0]), np.arange(cell_map.shape[1]), indexing="ij")
    ys, xs = (np.clip(np.rint(v), 0, n - 1).astype(np.intp) for v, n in
              zip(grid.to_pixels(rows, cols), content.shape))
    masked = np.where(content[ys, xs], cell_map, -np.inf)
    i, j = np.unravel_index(int(np.argmax(masked)), masked.shape)
    return int(ys[i, j]), int(xs[i, j]), float(cell_map[i, j])


def mass_inside(pixel_map: np.ndarray, region: np.ndarray, content: np.ndarray) -> float:
    """Share of the (non-negative) map's total over the content that lies in `region`."""
    values = np.clip(pixel_map, 0.0, None) * content
    total = float(values.sum())
    return float(values[region].sum()) / total if total > 0 else math.nan


def locate(cell_map: np.ndarray, grid: CellGrid, geometry: Geometry, roi: np.ndarray | None) -> Localisation:
    """Peak of a cell map, its DICOM pixel, and (with a target ROI mask on the model grid) hit and mass."""
    content = content_mask(geometry)
    y, x, value = peak_of(cell_map, grid, content)
    has_roi = roi is not None and bool(roi.any())
    return Localisation(
        peak=(y, x), source=source_pixel(y, x, geometry), value=value,
        in_roi=bool(roi[y, x]) if has_roi else None,
        roi_mass=mass_inside(cells_to_pixels(cell_map, grid, geometry.out_shape), roi, content) if has_roi else None,
    )


def target_rois(rois: pd.DataFrame, label: int) -> pd.DataFrame:
    """An image's target ROIs: the malignant ones for a malignant image, else all of them."""
    return rois[rois["pathology"] == "MALIGNANT"] if label == 1 else rois


@dataclass(frozen=True)
class PointingSummary:
    images: int  # malignant images with a malignant ROI (the denominator)
    hits: int
    mean_roi_mass: float

    @property
    def accuracy(self) -> float:
        return self.hits / self.images if self.images else math.nan


def pointing_game(table: pd.DataFrame) -> PointingSummary:
    """From explain.csv rows (`label`, `peak_in_roi`, `roi_mass`): malignant images with a target ROI."""
    rows = table[(table["label"] == 1) & table["peak_in_roi"].notna()]
    mass = rows["roi_mass"].astype(float)
    return PointingSummary(images=len(rows), hits=int(rows["peak_in_roi"].astype(int).sum()),
                           mean_roi_mass=float(mass.mean()) if mass.notna().any() else math.nan)
