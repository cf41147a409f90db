"""`mammo-train explain`: per-image heatmap overlays, DIR/explain.csv and the localisation score.

    OUT/<image_id>.png      mammogram + translucent malignancy heatmap + ROI outlines + probability
    OUT/dicom/<image_id>.dcm   the same as a DICOM Secondary Capture (with --dicom)
    OUT/explain.csv         image_id, label, malignant_prob, peak_row, peak_col, peak_value
                            [, peak_in_roi, roi_mass, roi_area when the index has rois.csv], overlay

Images: the split's first N in index order, malignant ones first. Without split.csv (a hospital's
manifest index) the default is every image. ROI masks are optional (a site has none); when the
index lists them, a missing mask file is an error, since the score would silently be wrong.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from pydicom.uid import generate_uid
from tqdm import tqdm

from mammo_fl.common.imaging.cache import ImageCache, default_cache_root
from mammo_fl.common.imaging.geometry import Geometry, PreprocessSettings
from mammo_fl.common.imaging.dicom import read_dicom
from mammo_fl.common.imaging.index import IndexTables, load_index
from mammo_fl.common.models.checkpoint import load_checkpoint
from mammo_fl.common.pipeline import overlay as ov
from mammo_fl.common.pipeline.cell_grid import CellGrid
from mammo_fl.common.pipeline.explain import Explainer, make_explainer
from mammo_fl.common.pipeline.localisation import (
    Localisation,
    PointingSummary,
    breast_region,
    locate,
    pointing_game,
    target_rois,
)
from mammo_fl.common.training.datasets import WholeImageDataset, to_model_tensor
from mammo_fl.common.utils.device import select_device
from mammo_fl.common.utils.errors import ConfigError, DataError

log = logging.getLogger(__name__)

CSV_NAME = "explain.csv"
METHOD_TITLES = {"patch": "patch-classifier heatmap", "cam": "class activation map"}


@dataclass(frozen=True)
class ExplainSettings:
    model: Path
    data: Path
    out: Path
    split: str | None = None  # None: "test" when the index has split.csv, else every image
    images: int | None = None  # None: all of them
    method: str = "patch"
    patch_model: Path | None = None
    dicom: bool = False
    cache: Path | None = None
    batch_size: int = 4
    workers: int | None = None  # processes filling the image cache (None = all cores)
    device: str = "auto"
    progress: bool = True


@dataclass
class ExplainResult:
    table: pd.DataFrame
    csv: Path
    scope: str
    pointing: PointingSummary | None  # None: the index has no ROIs
    seconds: float
    skipped: list[tuple[str, str]] = field(default_factory=list)


def select_images(tables: IndexTables, split: str | None, n: int | None) -> tuple[pd.DataFrame, str]:
    """The first `n` images of the split (index order), malignant ones first; (rows, description)."""
    if n is not None and n < 1:
        raise ConfigError(f"--images must be >= 1 (got {n})")
    if split is None and tables.split is None:
        images, scope = tables.images, "all images (the index has no split)"
    else:
        split = split or "test"
        images = tables.images_with_split()
        images, scope = images[images["split"] == split], f"{split} split"
    images = images.sort_values("label", ascending=False, kind="stable")
    images = images.head(n) if n else images
    if images.empty:
        raise DataError(tables.root, f"no images in the {scope}")
    return images.reset_index(drop=True), scope


def roi_rows(tables: IndexTables, images: pd.DataFrame) -> pd.DataFrame | None:
    """The chosen images' ROI rows (None without rois.csv); every listed mask file must exist."""
    if tables.rois is None:
        return None
    rois = tables.rois[tables.rois["image_id"].isin(set(images["image_id"]))]
    missing = [p for p in rois["mask_path"] if not Path(p).is_file()]
    if missing:
        raise DataError(missing[0], f"ROI mask listed in rois.csv not found ({len(missing)} missing); "
                        "re-run `mammo-data index` or remove rois.csv to explain without ROIs")
    return rois


def _cache(settings: ExplainSettings, preprocessing: dict[str, Any]) -> ImageCache:
    prep = PreprocessSettings(int(preprocessing["height"]), int(preprocessing["width"]),
                              str(preprocessing.get("mode", "paper")))
    return ImageCache(settings.cache or default_cache_root(settings.data), prep)


def fill_cache(cache: ImageCache, images: pd.DataFrame, rois: pd.DataFrame | None, workers: int | None,
               progress: bool) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """Cache the images and their masks; unreadable images are dropped and listed, a bad mask is an error."""
    paths = dict(zip(images["image_id"], images["image_path"].astype(str)))
    pairs = [] if rois is None else [(m, paths[i]) for i, m in zip(rois["image_id"], rois["mask_path"])]
    image_report, mask_report = cache.build_with_masks(list(paths.values()), pairs, workers=workers,
                                                       progress=progress)
    bad = {str(p) for p, _ in image_report.skipped}
    mask_problems = [(p, r) for p, r in mask_report.skipped if not r.startswith("image not usable")]
    if mask_problems:
        raise DataError(mask_problems[0][0], f"ROI mask unusable: {mask_problems[0][1]}")
    kept = images[~images["image_path"].astype(str).isin(bad)].reset_index(drop=True)
    if kept.empty:
        raise DataError(None, "none of the chosen images is readable")
    return kept, [(str(p), str(r)) for p, r in image_report.skipped]


def target_mask(cache: ImageCache, row: pd.Series, rois: pd.DataFrame | None) -> tuple[np.ndarray | None, list]:
    """(union of the image's target ROI masks on the model grid or None, [(mask, pathology)] of all its ROIs)."""
    if rois is None:
        return None, []
    mine = rois[rois["image_id"] == row["image_id"]]
    masks = [(cache.load_mask(m, row["image_path"]), p) for m, p in zip(mine["mask_path"], mine["pathology"])]
    targets = set(target_rois(mine, int(row["label"]))["mask_path"])
    chosen = [mask for (mask, _), path in zip(masks, mine["mask_path"]) if path in targets]
    return (np.logical_or.reduce(chosen) if chosen else None), masks


def safe_name(image_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(image_id)).strip("_") or "image"


@dataclass(frozen=True)
class _Job:
    """What every image of one run shares."""

    settings: ExplainSettings
    cache: ImageCache
    rois: pd.DataFrame | None
    series_uid: str  # one DICOM series per run


def render(job: _Job, row: pd.Series, prob: float, heat: tuple[np.ndarray, CellGrid], geometry: Geometry,
           region: np.ndarray, loc: Localisation, rois: list) -> Image.Image:
    """The overlay picture of one image on its stored DICOM grid (heat shown inside `region` only)."""
    dicom = read_dicom(row["image_path"], min_side=job.cache.min_side, require_mg=job.cache.require_mg)
    shape = ov.display_shape(geometry.src_shape)
    width = max(1, shape[0] // 400)
    outlines = [(ov.outline(ov.mask_on_display(mask, geometry, shape), width),
                 ov.ROI_COLOURS.get(pathology, ov.ROI_COLOURS["BENIGN"])) for mask, pathology in rois]
    content = ov.OverlayContent(
        grey=ov.resize_grey(ov.reading_window(dicom.pixels, dicom.voi), shape),
        heat=ov.heat_on_display(*heat, geometry, shape) * ov.mask_on_display(region, geometry, shape),
        outlines=outlines,
        peak=ov.source_to_display(*loc.source, shape, geometry.src_shape),
        lines=[f"P(malignant) {prob:.3f}", METHOD_TITLES[job.settings.method], str(row["image_id"])])
    return ov.compose(content)


def explain_image(job: _Job, row: pd.Series, number: int, image: np.ndarray, prob: float,
                  heat: tuple[np.ndarray, CellGrid]) -> dict[str, Any]:
    """Localise, render and write the overlay of one image (`image`: its cached uint16 copy); returns its
    explain.csv row."""
    geometry = job.cache.geometry(row["image_path"])
    region = breast_region(image, geometry)
    target, all_rois = target_mask(job.cache, row, job.rois)
    loc = locate(*heat, geometry, region, target)
    picture = render(job, row, prob, heat, geometry, region, loc, all_rois)
    name, out_dir = safe_name(row["image_id"]), job.settings.out
    ov.save_png(picture, out_dir / f"{name}.png")
    if job.settings.dicom:
        from mammo_fl.common.pipeline.secondary_capture import write_secondary_capture

        write_secondary_capture(np.asarray(picture), Path(row["image_path"]), out_dir / "dicom" / f"{name}.dcm",
                                job.series_uid, number)
    out = {"image_id": row["image_id"], "label": int(row["label"]), "malignant_prob": round(prob, 6),
           "peak_row": loc.source[0], "peak_col": loc.source[1], "peak_value": round(loc.value, 6)}
    if job.rois is not None:
        out["peak_in_roi"] = None if loc.in_roi is None else int(loc.in_roi)
        out["roi_mass"] = None if loc.roi_mass is None else round(loc.roi_mass, 6)
        out["roi_area"] = None if loc.roi_area is None else round(loc.roi_area, 6)
    out["overlay"] = f"{name}.png"
    return out


def _load_explainer(settings: ExplainSettings, device: torch.device) -> tuple[Explainer, dict[str, Any]]:
    whole = load_checkpoint(settings.model, device)
    explainer = make_explainer(settings.method, whole, Path(settings.model), settings.patch_model, device)
    return explainer, whole.preprocessing


def run_explain(settings: ExplainSettings) -> ExplainResult:
    start = time.perf_counter()
    device = select_device(settings.device)
    explainer, preprocessing = _load_explainer(settings, device)
    tables = load_index(settings.data)
    images, scope = select_images(tables, settings.split, settings.images)
    rois = roi_rows(tables, images)
    cache = _cache(settings, preprocessing)
    images, skipped = fill_cache(cache, images, rois, settings.workers, settings.progress)
    dataset = WholeImageDataset(images, cache, float(preprocessing["mean"]), augment=False)
    settings.out.mkdir(parents=True, exist_ok=True)
    job, rows = _Job(settings, cache, rois, generate_uid()), []
    bar = tqdm(total=len(images), desc=f"explain ({settings.method})", unit="image", disable=not settings.progress)
    for first in range(0, len(images), settings.batch_size):
        idx = range(first, min(first + settings.batch_size, len(images)))
        arrays = [dataset.load_uint16(i) for i in idx]
        batch = explainer(torch.stack([to_model_tensor(a, dataset.mean) for a in arrays]))
        for k, i in enumerate(idx):
            rows.append(explain_image(job, images.iloc[i], i + 1, arrays[k], float(batch.probs[k]),
                                      (batch.maps[k], batch.grid)))
            bar.update(1)
    bar.close()
    table = pd.DataFrame(rows)
    if "peak_in_roi" in table:
        table["peak_in_roi"] = table["peak_in_roi"].astype("Int64")
    csv = settings.out / CSV_NAME
    table.to_csv(csv, index=False)
    pointing = pointing_game(table) if rois is not None else None
    return ExplainResult(table, csv, scope, pointing, time.perf_counter() - start, skipped)
