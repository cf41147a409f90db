"""The source model: a given whole-image checkpoint, or one built once and cached.

With no `--model`, the training pipeline (what `mammo-train run --preset cpu` runs) is run
on synthetic DDSM-like data, and the resulting whole-image checkpoint is cached under
`<cache>/source/<hash>/source.pt`, where the hash covers the training config (after
overrides) and the synthetic data settings. A second run with the same settings starts at
once; a changed setting builds a new model next to the old one.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from mammo_fl.common.models.checkpoint import read_checkpoint_meta
from mammo_fl.common.utils.atomic import atomic_path, atomic_write_json
from mammo_fl.common.utils.errors import ConfigError, DataError, MammoError
from mammo_fl.simulations.settings import SourceSettings, config_hash

log = logging.getLogger(__name__)

SOURCE_FILE = "source.pt"
META_FILE = "source.json"


@dataclass
class SourceModel:
    path: Path
    preprocessing: dict[str, Any]
    model_spec: dict[str, Any]
    built: bool = False  # built by this run
    cached: bool = False  # taken from the cache
    cache_key: str = ""
    build_seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        out = asdict(self)
        out["path"] = str(self.path)
        return out


def _whole_image_meta(path: Path) -> dict[str, Any]:
    meta = read_checkpoint_meta(path)
    if meta.get("kind") != "whole_image":
        raise DataError(path, f"--model must be a whole-image checkpoint, got kind {meta.get('kind')!r}")
    return meta


def given_source(path: Path) -> SourceModel:
    meta = _whole_image_meta(path)
    return SourceModel(path=path.resolve(), preprocessing=meta["preprocessing"], model_spec=meta["model_spec"],
                       details={"provenance": meta.get("provenance", {}), "metrics": meta.get("metrics", {})})


def source_cache_key(settings: SourceSettings) -> tuple[str, dict[str, Any]]:
    """Hash of everything that shapes the built model: training config and synthetic data settings."""
    from mammo_fl.common.pipeline.settings import load_run_settings

    train_config = load_run_settings(settings.train_preset, settings.overrides).source  # validated
    payload = {"train": train_config, "data": {
        "patients": settings.patients, "seed": settings.seed,
        "height": settings.image_height, "width": settings.image_width,
        "conspicuity": settings.conspicuity, "lesion_scale": settings.lesion_scale,
    }, "format": 1}
    return config_hash(payload), payload


def resolve_source_model(model: Path | None, settings: SourceSettings, cache_root: Path,
                         device: torch.device) -> SourceModel:
    """The given checkpoint, the cached one, or a freshly built one (in that order)."""
    if model is not None:
        return given_source(Path(model))
    if settings.require_model:
        raise ConfigError("this preset needs --model: a whole-image checkpoint (e.g. from mammo-train --preset paper)")
    key, payload = source_cache_key(settings)
    folder = cache_root / "source" / key
    path = folder / SOURCE_FILE
    if path.is_file():
        try:
            source = given_source(path)
            source.cached, source.cache_key = True, key
            source.details = json.loads((folder / META_FILE).read_text()) if (folder / META_FILE).is_file() else {}
            return source
        except MammoError as exc:
            log.warning("cached source model unusable (%s); rebuilding", exc)
    return build_source_model(settings, folder, key, payload)


def build_source_model(settings: SourceSettings, folder: Path, key: str, payload: dict[str, Any]) -> SourceModel:
    """Synthetic DDSM-like data -> training pipeline -> whole-image checkpoint, cached atomically."""
    from mammo_fl.simulations.synthetic import make_synthetic_index

    start = time.perf_counter()
    work = folder.with_name(folder.name + ".building")
    if work.exists():
        shutil.rmtree(work)  # an interrupted earlier build
    work.mkdir(parents=True)
    print(f"mammo-sim: building the source model (mammo-train --preset {settings.train_preset} on synthetic "
          f"DDSM-like data); cached afterwards under {folder}")
    index_dir = make_synthetic_index(
        layout="cbis-ddsm", out_dir=work / "data", patients=settings.patients, seed=settings.seed,
        height=settings.image_height, width=settings.image_width,
        conspicuity=settings.conspicuity, lesion_scale=settings.lesion_scale,
    )
    run_dir = work / "train"
    checkpoint = _train_whole_image(index_dir, run_dir, settings)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / SOURCE_FILE) as tmp:
        shutil.copy2(checkpoint, tmp)
    # Keep the training run's reports (metrics, ROC, patch model) next to the model; the bulky
    # synthetic DICOMs and caches go.
    kept = folder / "train_run"
    shutil.rmtree(kept, ignore_errors=True)
    shutil.rmtree(run_dir / "patches", ignore_errors=True)
    shutil.move(str(run_dir), str(kept))
    shutil.rmtree(work, ignore_errors=True)
    seconds = time.perf_counter() - start
    details = {"cache_key": key, "config": payload, "build_seconds": round(seconds, 1), "train_run": str(kept),
               "source_metrics": _headline_metrics(kept / "metrics.json")}
    atomic_write_json(folder / META_FILE, details, indent=2, default=str)
    meta = _whole_image_meta(folder / SOURCE_FILE)
    return SourceModel(path=(folder / SOURCE_FILE).resolve(), preprocessing=meta["preprocessing"],
                       model_spec=meta["model_spec"], built=True, cache_key=key, build_seconds=seconds,
                       details=details)


def _headline_metrics(path: Path) -> dict[str, Any]:
    """The source run's scalar metrics (test AUC on the synthetic DDSM-like test split, ...)."""
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}


def _train_whole_image(index_dir: Path, run_dir: Path, settings: SourceSettings) -> Path:
    """Run the training pipeline (what `mammo-train run` runs) and return its whole-image checkpoint."""
    from mammo_fl.common.pipeline.rundir import open_run
    from mammo_fl.common.pipeline.settings import load_run_settings
    from mammo_fl.common.pipeline.steps import run_pipeline

    run_settings = load_run_settings(settings.train_preset, settings.overrides)
    run_pipeline(open_run(run_settings, index_dir, run_dir))
    return find_whole_image_checkpoint(run_dir)


def find_whole_image_checkpoint(run_dir: Path) -> Path:
    """The final whole-image checkpoint of a mammo-train run folder (RUNDIR/whole_image.pt)."""
    from mammo_fl.common.pipeline.rundir import RunPaths

    path = RunPaths(run_dir).whole_model
    if not path.is_file():
        raise MammoError(f"mammo-train run in {run_dir} produced no whole-image checkpoint ({path.name})")
    _whole_image_meta(path)
    return path
