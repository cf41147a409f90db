"""Does the heatmap point at the lesion? Peak location, ROI hit, heatmap mass in ROIs, pointing game.

The peak is the centre of the map's hottest cell among the cells centred on the breast, reported on
the model grid and on the stored DICOM grid. The breast (the cache's crop-mode breast mask: threshold,
erosion, largest component, dilation) is the search region because the patch classifier never saw
anything else: its background patches need >= 75 % tissue, so over the black film background its
output is arbitrary (one CPU-preset patch net called it malignant at 0.98). Taking the peak from the
cells, not from the resampled pixel map, keeps it off the edge strips where resampling holds the
outer cells constant. An image's *target* ROIs are its malignant
ROIs when it is malignant, otherwise all of its ROIs (did the model look at the benign finding?).
The pointing game (Zhang et al. 2016) is the share of malignant images with a malignant ROI whose
peak falls inside one; the mass is the share of the map's total (over the breast) inside the target
ROIs, and the area their share of the breast: a uniformly random point in the breast hits with
probability = area (the chance level), a map spread evenly has mass = area.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mammo_fl.common.imaging.breast import breast_mask_small
from mammo_fl.common.imaging.geometry import Geometry, resize_mask
from mammo_fl.common.pipeline.cell_grid import CellGrid, cells_to_pixels
from mammo_fl.common.pipeline.source_grid import content_mask, source_pixel


@dataclass(frozen=True)
class Localisation:
    peak: tuple[int, int]  # (y, x) on the model grid
    source: tuple[int, int]  # (row, col) on the stored DICOM grid
    value: float  # the map at the peak
    in_roi: bool | None  # None: the image has no target ROI
    roi_mass: float | None
    roi_area: float | None  # the target ROIs' share of the search region (breast)


def breast_region(image: np.ndarray, geometry: Geometry) -> np.ndarray:
    """bool (model grid): the breast in a cached uint16 image; all of the content if none is found."""
    content = content_mask(geometry)
    small, _ = breast_mask_small(image.astype(np.float32) / 65535.0)
    breast = resize_mask(small, *image.shape) & content
    return breast if breast.any() else content


def peak_of(cell_map: np.ndarray, grid: CellGrid, region: np.ndarray) -> tuple[int, int, float]:
    """(y, x, value): model pixel at the centre of the hottest cell centred inside `region` (first on ties)."""
    rows, cols = np.meshgrid(np.arange(cell_map.shape[0]), np.arange(cell_map.shape[1]), indexing="ij")
    ys, xs = (np.clip(np.rint(v), 0, n - 1).astype(np.intp) for v, n in
              zip(grid.to_pixels(rows, cols), region.shape))
    inside = region[ys, xs]
    masked = np.where(inside if inside.any() else True, cell_map, -np.inf)  # a region between cell centres: all
    i, j = np.unravel_index(int(np.argmax(masked)), masked.shape)
    return int(ys[i, j]), int(xs[i, j]), float(cell_map[i, j])


def mass_inside(pixel_map: np.ndarray, roi: np.ndarray, region: np.ndarray) -> float:
    """Share of the (non-negative) map's total over `region` (the breast) that lies in `roi`."""
    values = np.clip(pixel_map, 0.0, None) * region
    total = float(values.sum())
    return float(values[roi].sum()) / total if total > 0 else math.nan


def locate(cell_map: np.ndarray, grid: CellGrid, geometry: Geometry, region: np.ndarray,
           roi: np.ndarray | None) -> Localisation:
    """Peak of a cell map inside `region` (model grid), its DICOM pixel, and (with a target ROI mask on
    the model grid) hit and mass."""
    y, x, value = peak_of(cell_map, grid, region)
    has_roi = roi is not None and bool(roi.any())
    return Localisation(
        peak=(y, x), source=source_pixel(y, x, geometry), value=value,
        in_roi=bool(roi[y, x]) if has_roi else None,
        roi_mass=mass_inside(cells_to_pixels(cell_map, grid, geometry.out_shape), roi, region) if has_roi else None,
        roi_area=float((roi & region).sum()) / float(region.sum()) if has_roi else None,
    )


def target_rois(rois: pd.DataFrame, label: int) -> pd.DataFrame:
    """An image's target ROIs: the malignant ones for a malignant image, else all of them."""
    return rois[rois["pathology"] == "MALIGNANT"] if label == 1 else rois


@dataclass(frozen=True)
class PointingSummary:
    images: int  # malignant images with a malignant ROI (the denominator)
    hits: int
    mean_roi_mass: float
    chance: float  # mean ROI share of the breast: the pointing game of a random point in the breast

    @property
    def accuracy(self) -> float:
        return self.hits / self.images if self.images else math.nan


def pointing_game(table: pd.DataFrame) -> PointingSummary:
    """From explain.csv rows (`label`, `peak_in_roi`, `roi_mass`, `roi_area`): malignant images with a target ROI."""
    rows = table[(table["label"] == 1) & table["peak_in_roi"].notna()]
    mass, area = rows["roi_mass"].astype(float), rows["roi_area"].astype(float)
    return PointingSummary(images=len(rows), hits=int(rows["peak_in_roi"].astype(int).sum()),
                           mean_roi_mass=float(mass.mean()) if mass.notna().any() else math.nan,
                           chance=float(area.mean()) if area.notna().any() else math.nan)
