"""One run directory (RUNDIR) of the Shen et al. pipeline and the context its steps share.

RUNDIR/
  config.json           resolved preset + overrides (what this run used)
  preprocessing.json    image size, mode, mean (fixed at the first step; later steps reuse it)
  patches/              patch set (common.pipeline.patches)
  patch_model.pt        5-class patch classifier (self-describing checkpoint)
  whole_image.pt        best whole-image classifier (validation AUC), whole_state.pt = resume state
  metrics.json, roc.png, predictions.csv   evaluation on the test split
  baseline.json, baseline_predictions_test.csv   two-step heatmap + random forest baseline (optional step)

`open_run` loads the index, fills the image cache (unreadable images are skipped and listed, never
fatal) and fixes the preprocessing; every step then works on the returned `RunContext`.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from mammo_fl.common.imaging.cache import ImageCache, default_cache_root, filter_readable, mean_grey
from mammo_fl.common.imaging.index import IndexTables, load_index
from mammo_fl.common.pipeline.settings import RunSettings
from mammo_fl.common.training.augment import AugmentSettings
from mammo_fl.common.training.datasets import WholeImageDataset
from mammo_fl.common.utils.atomic import atomic_write_json
from mammo_fl.common.utils.device import select_device, seed_everything, set_cpu_threads
from mammo_fl.common.utils.errors import ConfigError, DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunPaths:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def patches(self) -> Path:
        return self.root / "patches"

    @property
    def patch_model(self) -> Path:
        return self.root / "patch_model.pt"

    @property
    def whole_model(self) -> Path:
        return self.root / "whole_image.pt"

    @property
    def whole_state(self) -> Path:
        return self.root / "whole_state.pt"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def roc(self) -> Path:
        return self.root / "roc.png"

    @property
    def predictions(self) -> Path:
        return self.root / "predictions.csv"

    @property
    def preprocessing(self) -> Path:
        return self.root / "preprocessing.json"


@dataclass
class RunContext:
    settings: RunSettings
    index_dir: Path
    paths: RunPaths
    device: torch.device
    tables: IndexTables
    images: pd.DataFrame  # usable images with a `split` column
    cache: ImageCache
    preprocessing: dict[str, Any]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def seed(self) -> int:
        return self.settings.seed

    @property
    def progress(self) -> bool:
        return self.settings.progress

    @property
    def num_workers(self) -> int:
        return self.settings.num_workers

    def split_images(self, split: str) -> pd.DataFrame:
        return self.images[self.images["split"] == split].reset_index(drop=True)

    def whole_dataset(self, split: str, augment: bool = False,
                      augment_settings: AugmentSettings | None = None) -> WholeImageDataset:
        return WholeImageDataset(self.split_images(split), self.cache, self.preprocessing["mean"], augment,
                                 seed=self.seed, augment_settings=augment_settings)


def _mask_pairs(tables: IndexTables, images: pd.DataFrame) -> list[tuple[str, str]]:
    """(mask_path, image_path) of every ROI whose image is in `images`."""
    if tables.rois is None or tables.rois.empty:
        return []
    by_id = dict(zip(images["image_id"].astype(str), images["image_path"].astype(str)))
    return [(m, by_id[str(i)]) for i, m in zip(tables.rois["image_id"], tables.rois["mask_path"]) if str(i) in by_id]


def open_run(settings: RunSettings, index_dir: str | Path, run_dir: str | Path) -> RunContext:
    """Load the index, fill the image cache (skipping unreadable files), fix the preprocessing."""
    index_dir, run_dir = Path(index_dir), Path(run_dir)
    set_cpu_threads(settings.threads)
    seed_everything(settings.seed)
    device = select_device(settings.device)
    tables = load_index(index_dir)
    images = tables.images_with_split()
    run_dir.mkdir(parents=True, exist_ok=True)
    paths = RunPaths(run_dir)
    atomic_write_json(paths.config, settings.source)
    data = settings.data
    cache = ImageCache(Path(data.cache_dir) if data.cache_dir else default_cache_root(index_dir), data.preprocess)
    start = time.perf_counter()
    images, skipped = filter_readable(images, cache, progress=settings.progress, workers=data.workers or None,
                                      masks=_mask_pairs(tables, images))
    for path, reason in skipped[:10]:
        log.warning("skipped %s: %s", path, reason)
    if images.empty:
        raise DataError(index_dir, "no readable images in the index")
    preprocessing = _fix_preprocessing(settings, paths, cache, images)
    ctx = RunContext(settings, index_dir, paths, device, tables, images, cache, preprocessing, skipped)
    ctx.timings["cache"] = time.perf_counter() - start
    log.info("run %s: %d images (%s), device %s, mean %.2f", run_dir, len(images),
             ", ".join(f"{k} {v}" for k, v in images["split"].value_counts().items()), device, preprocessing["mean"])
    return ctx


def _fix_preprocessing(settings: RunSettings, paths: RunPaths, cache: ImageCache, images: pd.DataFrame
                       ) -> dict[str, Any]:
    """Size/mode from the settings; mean from the settings or measured on the training images (once per run)."""
    prep = settings.data.preprocess
    wanted = {"height": prep.height, "width": prep.width, "mode": prep.mode}
    if paths.preprocessing.is_file():
        saved = json.loads(paths.preprocessing.read_text())
        if {k: saved.get(k) for k in wanted} == wanted:
            return saved
        raise ConfigError(f"{paths.root} was run at {saved.get('height')}x{saved.get('width')} "
                          f"({saved.get('mode')}); use another --out for {prep.height}x{prep.width}")
    mean = settings.data.mean
    if mean is None:
        train = images[images["split"] == "train"]
        mean = mean_grey(cache, train["image_path"].astype(str).tolist())
    out = {**wanted, "mean": round(float(mean), 4)}
    atomic_write_json(paths.preprocessing, out)
    return out
