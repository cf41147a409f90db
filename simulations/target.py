"""Target data of the transfer experiment: images (BI-RADS 3 excluded) and the fixed 70/30 split.

Three sources, all read through the project's adapters:
- an INbreast release folder (`--inbreast`),
- a folder of site folders with manifest.csv (`--sites-dir`; the folder name becomes `site`),
- by default a synthetic INbreast-like FFDM dataset of the paper's size (115 patients), from
  one scanner profile or, with `vendors`, each patient from one of several (label-balanced).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from mammo_fl.common.utils.errors import ConfigError, DataError
from mammo_fl.simulations.settings import TargetSettings
from mammo_fl.simulations.synthetic import cached_dataset


@dataclass
class TargetData:
    images: pd.DataFrame  # image_id, image_path (absolute), patient_id, label, [vendor, site, ...]
    split: pd.DataFrame  # patient_id, split (train|val): validation fixed for the whole run
    description: dict[str, Any] = field(default_factory=dict)


def _index_inbreast(src: Path, work: Path) -> tuple[pd.DataFrame, list]:
    from mammo_fl.common.imaging.adapters.inbreast import build_index

    tables = build_index(src, work, progress=True)
    return tables.images, list(getattr(tables, "skipped", []) or [])


def _attach_vendor(images: pd.DataFrame, root: Path) -> pd.DataFrame:
    """Synthetic data: take the vendor profile of each image from the generator's ground truth."""
    truth = root / "ground_truth.csv"
    if "vendor" in images.columns or not truth.is_file():
        return images
    gt = pd.read_csv(truth, dtype=str)
    column = next((c for c in ("vendor", "profile", "vendor_profile") if c in gt.columns), None)
    if column is None:
        return images
    key = next((c for c in ("image_path", "path", "file") if c in gt.columns), None)
    if key is None:
        return images
    by_name = {Path(p).name: v for p, v in zip(gt[key], gt[column])}
    out = images.copy()
    out["vendor"] = out["image_path"].map(lambda p: by_name.get(Path(p).name, "unknown"))
    return out


def _read_sites(sites_dir: Path) -> pd.DataFrame:
    from mammo_fl.common.imaging.adapters.manifest import read_manifest

    if not sites_dir.is_dir():
        raise DataError(sites_dir, "not a directory")
    folders = sorted(p for p in sites_dir.iterdir() if p.is_dir() and (p / "manifest.csv").is_file())
    if not folders:
        raise DataError(sites_dir, "no site folders with a manifest.csv")
    frames = []
    for folder in folders:
        images = read_manifest(folder)
        images["site"] = folder.name
        images["patient_id"] = folder.name + "/" + images["patient_id"].astype(str)  # ids are per hospital
        images["image_id"] = folder.name + "/" + images["image_id"].astype(str)
        frames.append(images)
    return pd.concat(frames, ignore_index=True)


def _split(images: pd.DataFrame, seed: int) -> pd.DataFrame:
    from mammo_fl.common.imaging.splits import split_patients

    if "split" in images.columns and images["split"].isin(["train", "val"]).all():
        return images.groupby("patient_id")["split"].first().reset_index()  # a split the data brings
    return split_patients(images, "inbreast", seed)


def load_target(inbreast: Path | None, sites_dir: Path | None, settings: TargetSettings,
                cache_root: Path, vendors: list[str] | None = None) -> TargetData:
    """Images and the fixed patient split of the chosen target data (`vendors`: synthetic scanner mix)."""
    skipped: list = []
    if inbreast is not None:
        images, skipped = _index_inbreast(Path(inbreast), cache_root / "index" / "inbreast")
        description: dict[str, Any] = {"kind": "inbreast", "path": str(Path(inbreast).resolve())}
    elif sites_dir is not None:
        images = _read_sites(Path(sites_dir))
        description = {"kind": "sites", "path": str(Path(sites_dir).resolve()),
                       "sites": sorted(images["site"].unique().tolist())}
    else:
        if settings.require_data:
            raise ConfigError("this preset runs on real data: pass --inbreast SRC or --sites-dir DIR")
        mix = {"vendors": tuple(vendors)} if vendors else {}  # absent = the one-scanner cache key as before
        root = cached_dataset("inbreast", cache_root, settings.patients, settings.seed, settings.image_height,
                              settings.image_width, domain=settings.domain,
                              conspicuity=float(settings.conspicuity), lesion_scale=float(settings.lesion_scale),
                              **mix)
        images, skipped = _index_inbreast(root, root / ".index")
        images = _attach_vendor(images, root)
        description = {"kind": "synthetic-inbreast", "path": str(root), "patients": settings.patients,
                       "seed": settings.seed, "conspicuity": settings.conspicuity,
                       "lesion_scale": settings.lesion_scale}
        if "vendor" in images.columns:
            description["vendors"] = {str(v): int(n) for v, n in
                                      images.groupby("vendor")["patient_id"].nunique().items()}
    if images.empty:
        raise DataError(None, "the target data has no usable images")
    if images["label"].nunique() < 2:
        raise DataError(None, "the target data holds a single class; AUC needs both")
    split = _split(images, settings.split_seed)
    description.update({"images": len(images), "patients": int(images["patient_id"].nunique()),
                        "positive_images": int(images["label"].sum()), "skipped_by_adapter": len(skipped),
                        "split_seed": settings.split_seed})
    return TargetData(images=images.reset_index(drop=True), split=split, description=description)
