"""Patch sets on disk: the writer (`build_patch_set`) and the reader (`load_patch_set`).

A patch-set folder holds one 16-bit PNG per patch in class folders (`PATCH_CLASSES`, class
index = position), `patches.csv` (one row per patch) and `patch_set.json` (sampling settings,
seed, preprocessing, counts, skipped images), written last: its presence marks a complete set,
and a set with the same signature is reused. Test patients never contribute patches.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from mammo_fl.common.imaging.breast import breast_mask
from mammo_fl.common.imaging.pool import map_in_processes
from mammo_fl.common.imaging.png16 import write_png16
from mammo_fl.common.models.checkpoint import PATCH_CLASSES
from mammo_fl.common.pipeline.patches.sampling import (
    RoiInput,
    SamplingSettings,
    blob_candidates,
    extract_patch,
    patch_class,
    sample_image,
)
from mammo_fl.common.utils.atomic import atomic_write_json
from mammo_fl.common.utils.errors import ConfigError, DataError, MammoError

log = logging.getLogger(__name__)

# Patches are read every epoch: grainy 16-bit patches barely compress (112 px: 21 KiB at zlib level 6,
# 25 KiB stored), while level 6 costs ~9x the encode and ~5x the decode time of stored PNGs.
PATCH_PNG_LEVEL = 0
PATCH_CSV = "patches.csv"
PATCH_META = "patch_set.json"
PATCH_COLUMNS = ["path", "image_id", "patient_id", "split", "class", "class_index", "x", "y", "roi_id", "source"]


@dataclass
class PatchSetReport:
    out_dir: Path
    counts: dict[str, dict[str, int]]  # split -> class -> patches
    images: int
    skipped: list[tuple[str, str]]  # (image_id, reason)
    seconds: float
    reused: bool = False


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text)).strip("_") or "img"


def _split_of_images(images: pd.DataFrame, split: pd.DataFrame | None) -> pd.Series:
    if split is None:
        raise DataError(None, "the index has no split.csv; run `mammo-data split` first")
    by_patient = dict(zip(split["patient_id"].astype(str), split["split"].astype(str)))
    return images["patient_id"].astype(str).map(by_patient)


def _settings_signature(settings: SamplingSettings, seed: int, preprocessing: dict[str, Any], splits: Iterable[str]) -> dict:
    return {"sampling": asdict(settings), "seed": int(seed), "preprocessing": preprocessing, "splits": sorted(splits)}


def load_patch_set(out_dir: Path) -> pd.DataFrame:
    """patches.csv of a finished patch set, with absolute `abs_path` added."""
    csv = Path(out_dir) / PATCH_CSV
    if not csv.is_file():
        raise DataError(csv, "no patch set here (run `mammo-train patches` first)")
    df = pd.read_csv(csv, dtype={"image_id": str, "patient_id": str, "roi_id": str}, keep_default_na=False)
    missing = set(PATCH_COLUMNS) - set(df.columns)
    if missing:
        raise DataError(csv, f"missing column(s) {', '.join(sorted(missing))}")
    df["abs_path"] = [str(Path(out_dir) / p) for p in df["path"]]
    return df


def _image_blob_candidates(cache: Any, tissue_threshold: float, patch_size: int,
                           image_path: str) -> list[tuple[int, int]] | None:
    """One image's blob candidates (a worker process); None when it cannot be read (the sequential
    pass reports that image as before)."""
    try:
        image = cache.load(image_path)
    except MammoError:
        return None
    return blob_candidates(image, breast_mask(image, tissue_threshold), patch_size)


def _all_blob_candidates(paths: list[str], cache: Any, settings: SamplingSettings, workers: int | None,
                         progress: bool) -> list[list[tuple[int, int]] | None]:
    """The LoG blob search of every image, in parallel: it is deterministic and ~60 % of the sampling
    time, while the seeded draws that follow must stay sequential (one generator for the whole set)."""
    if settings.blob_negatives <= 0 or settings.background_per_image <= 0:
        return [None] * len(paths)
    job = partial(_image_blob_candidates, cache, settings.tissue_threshold, settings.patch_size)
    return map_in_processes(job, paths, workers, progress, desc="blob search")


def build_patch_set(
    images: pd.DataFrame,
    rois: pd.DataFrame | None,
    split: pd.DataFrame | None,
    cache: Any,
    settings: SamplingSettings,
    out_dir: Path,
    seed: int,
    *,
    splits: Sequence[str] = ("train", "val"),
    preprocessing: dict[str, Any] | None = None,
    progress: bool = True,
    overwrite: bool = False,
    workers: int | None = None,
) -> PatchSetReport:
    """Sample and write the patch set of the images whose patient is in `splits`.

    Test patients never contribute (they are refused in `splits`). A finished set with the same
    settings, seed and preprocessing is reused. `cache` is an ImageCache (`load`, `load_mask`).
    `workers`: processes for the blob search (None = all cores); the set is the same for any number.
    """
    if "test" in splits:
        raise ConfigError("test patients must never contribute patches")
    out_dir = Path(out_dir)
    signature = _settings_signature(settings, seed, preprocessing or {}, splits)
    meta_path = out_dir / PATCH_META
    if meta_path.is_file() and (out_dir / PATCH_CSV).is_file() and not overwrite:
        meta = json.loads(meta_path.read_text())
        if meta.get("signature") == signature:
            log.info("reusing patch set %s", out_dir)
            return PatchSetReport(out_dir, meta["counts"], meta["images"], [tuple(s) for s in meta["skipped"]], 0.0, True)
        log.info("patch set %s has other settings; rebuilding", out_dir)
    if rois is None or rois.empty:
        raise DataError(None, "the index has no ROI annotations (rois.csv); patch sampling needs them")
    start = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in (PATCH_CSV, PATCH_META):
        (out_dir / name).unlink(missing_ok=True)
    for name in PATCH_CLASSES:
        (out_dir / name).mkdir(exist_ok=True)
        for old in (out_dir / name).glob("*.png"):
            old.unlink()
    frame = images.copy()
    frame["split"] = _split_of_images(frame, split)
    skipped: list[tuple[str, str]] = []
    no_split = frame[frame["split"].isna()]
    skipped += [(str(i), "patient has no split") for i in no_split["image_id"]]
    chosen = frame[frame["split"].isin(list(splits))]
    rois_by_image = {str(k): g for k, g in rois.groupby(rois["image_id"].astype(str))}
    rng = np.random.default_rng(seed)
    rows: list[dict[str, Any]] = []
    class_index = {n: i for i, n in enumerate(PATCH_CLASSES)}
    blobs = _all_blob_candidates(chosen["image_path"].astype(str).tolist(), cache, settings, workers, progress)
    iterator = tqdm(chosen.itertuples(index=False), total=len(chosen), desc="patches", disable=not progress)
    n_images = 0
    for rec, image_blobs in zip(iterator, blobs, strict=True):
        image_id = str(rec.image_id)
        try:
            image = cache.load(rec.image_path)
            roi_inputs = []
            for roi in rois_by_image.get(image_id, pd.DataFrame()).itertuples(index=False):
                try:
                    cls = patch_class(roi.abnormality, roi.pathology)
                except ValueError as exc:
                    skipped.append((image_id, f"ROI {roi.roi_id}: {exc}"))
                    continue
                mask = cache.load_mask(roi.mask_path, rec.image_path)
                roi_inputs.append(RoiInput(str(roi.roi_id), np.asarray(mask, dtype=bool), cls))
        except MammoError as exc:
            skipped.append((image_id, str(exc)))
            continue
        sample = sample_image(image, roi_inputs, settings, rng, image_blobs)
        skipped += [(image_id, p) for p in sample.problems]
        n_images += 1
        stem = _safe_name(image_id)
        for k, spec in enumerate(sample.patches):
            rel = f"{spec.class_name}/{stem}_{k:03d}.png"
            write_png16(out_dir / rel, extract_patch(image, spec.y, spec.x, settings.patch_size),
                        PATCH_PNG_LEVEL)
            rows.append(
                {
                    "path": rel,
                    "image_id": image_id,
                    "patient_id": str(rec.patient_id),
                    "split": rec.split,
                    "class": spec.class_name,
                    "class_index": class_index[spec.class_name],
                    "x": spec.x,
                    "y": spec.y,
                    "roi_id": spec.roi_id,
                    "source": spec.source,
                }
            )
    table = pd.DataFrame(rows, columns=PATCH_COLUMNS)
    counts = {
        s: {c: int(((table["split"] == s) & (table["class"] == c)).sum()) for c in PATCH_CLASSES} for s in splits
    }
    table.to_csv(out_dir / PATCH_CSV, index=False)
    seconds = time.perf_counter() - start
    meta = {"signature": signature, "counts": counts, "images": n_images, "skipped": skipped, "seconds": seconds,
            "class_names": list(PATCH_CLASSES)}
    atomic_write_json(meta_path, meta)  # written last: marks the set as complete
    for image_id, reason in skipped[:20]:
        log.warning("patches: skipped %s: %s", image_id, reason)
    if len(skipped) > 20:
        log.warning("patches: %d more problems listed in %s", len(skipped) - 20, meta_path)
    return PatchSetReport(out_dir, counts, n_images, skipped, seconds)
