"""Synthetic data for simulations, generated once per settings and cached.

The generator (common.synth) writes DICOMs in a real dataset's layout; the dataset's own
adapter then indexes them, so the simulation reads synthetic data through exactly the code
path real data takes.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from mammo_fl.common.utils.errors import DataError
from mammo_fl.simulations.settings import config_hash

COMPLETE = ".complete"  # written last: a folder without it is an interrupted generation


def _size(height: int, width: int) -> tuple[int, int] | None:
    return (int(height), int(width)) if height and width else None


def cached_dataset(layout: str, cache_root: Path, patients: int, seed: int, height: int, width: int,
                   **options: object) -> Path:
    """Generate (or reuse) a synthetic dataset; returns its root folder."""
    from mammo_fl.common.synth import generate_dataset

    spec = {"layout": layout, "patients": patients, "seed": seed, "size": _size(height, width), **options}
    folder = cache_root / "synthetic" / f"{layout}-{config_hash(spec)}"
    if (folder / COMPLETE).is_file():
        return folder
    if folder.exists():
        shutil.rmtree(folder)
    kwargs = {k: v for k, v in options.items() if v is not None}
    generate_dataset(layout, folder, patients=patients, seed=seed, size=_size(height, width), progress=True,
                     **kwargs)
    (folder / COMPLETE).write_text("ok\n")
    return folder


def make_synthetic_index(layout: str, out_dir: Path, patients: int, seed: int, height: int = 0,
                         width: int = 0, conspicuity: float = 1.0, lesion_scale: float = 1.0,
                         secondary_signs: float = 0.0) -> Path:
    """Generate a dataset into `out_dir/raw`, index it with its adapter into `out_dir/index` (+ split)."""
    from mammo_fl.common.imaging.adapters import build_index
    from mammo_fl.common.imaging.index import write_index
    from mammo_fl.common.imaging.splits import split_patients
    from mammo_fl.common.synth import generate_dataset

    raw = out_dir / "raw"
    kwargs: dict = {"size": _size(height, width), "progress": True, "conspicuity": float(conspicuity),
                    "lesion_scale": float(lesion_scale), "secondary_signs": float(secondary_signs)}
    generate_dataset(layout, raw, patients=patients or _default_patients(layout), seed=seed, **kwargs)
    index_dir = out_dir / "index"
    tables = build_index(layout, raw, index_dir)
    if tables.images.empty:
        raise DataError(raw, "synthetic dataset produced no usable images")
    scheme = "ddsm" if layout == "cbis-ddsm" else "inbreast"
    write_index(index_dir, tables.images, tables.rois, split_patients(tables.images, scheme, seed))
    return index_dir


def _default_patients(layout: str) -> int:
    return {"cbis-ddsm": 300, "inbreast": 115}.get(layout, 100)
