"""Materialise virtual sites as the folders a hospital's SuperNode reads.

Each site folder gets `manifest.csv` (common/adapters/manifest.py format: `image_path`
relative to the site folder, `patient_id`, `label`, plus laterality/view/vendor), so the
ClientApp loads it exactly as it would a real hospital's data. Two things are prepared in
the site's state folder (client.site.STATE_SUBDIR) so the comparison with pooled training
is fair and cheap:

- `split.csv` (the site's saved split, which the ClientApp keeps fixed): every patient of
  the site is a *training* patient, and the site's local validation set is a share of the
  central fixed validation set (its patients dealt over the sites, stratified; when the sites
  hold different scanners, each validation patient goes to a site with that patient's scanner,
  as a hospital validates on its own patients -- what FedBN's per-site BatchNorm needs). Federated
  training then sees exactly the images pooled training sees, and Flower's per-round
  federated AUC, pooled from the sites' score histograms, is measured on the union of the
  shares = the same validation set as every other arm, at the cost of one evaluation of
  it per round. Validation patients are never training patients anywhere.
- `cache` -> a link to the run's shared preprocessing cache (entries are keyed by the
  resolved DICOM path), so sites do not decode the same DICOMs again.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from mammo_fl.common.utils.errors import DataError

MANIFEST_COLUMNS = ["image_path", "patient_id", "label", "laterality", "view"]
OPTIONAL_COLUMNS = ["vendor"]


def write_manifest(site_dir: Path, images: pd.DataFrame) -> Path:
    """manifest.csv with paths relative to the site folder (no copies, no symlinks)."""
    site_dir.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame({
        "image_path": [os.path.relpath(Path(p).resolve(), site_dir.resolve()) for p in images["image_path"]],
        "patient_id": images["patient_id"].astype(str).values,
        "label": images["label"].astype(int).values,
        "laterality": images["laterality"].values if "laterality" in images.columns else "",
        "view": images["view"].values if "view" in images.columns else "",
    })
    for column in OPTIONAL_COLUMNS:
        if column in images.columns:
            frame[column] = images[column].astype(str).values
    path = site_dir / "manifest.csv"
    frame.to_csv(path, index=False)
    return path


def _link_cache(state_dir: Path, cache_root: Path) -> None:
    link = state_dir / "cache"
    if link.is_symlink() or link.is_file():
        link.unlink()
    elif link.is_dir():
        shutil.rmtree(link)
    link.symlink_to(cache_root.resolve(), target_is_directory=True)


def _scanners(by_site: dict[str, pd.DataFrame]) -> dict[str, set[str]]:
    return {name: set(frame["vendor"].astype(str)) if "vendor" in frame.columns else set()
            for name, frame in by_site.items()}


def _deal_by_scanner(patients: pd.DataFrame, scanners: dict[str, set[str]], seed: int) -> dict[str, str]:
    """Validation patient -> a site holding that patient's scanner (the least loaded one; label by label,
    so shares stay stratified). A scanner no site holds is dealt over all sites."""
    rng = np.random.default_rng([seed, 4])
    names = sorted(scanners)
    load = dict.fromkeys(names, 0)
    out: dict[str, str] = {}
    for (vendor, _label), group in patients.groupby(["vendor", "label"], sort=True):
        homes = [n for n in names if str(vendor) in scanners[n]] or names
        ids = group["patient_id"].astype(str).to_numpy()
        for pid in ids[rng.permutation(len(ids))]:
            site = min(homes, key=lambda n: (load[n], n))
            out[str(pid)] = site
            load[site] += 1
    return out


def _deal_validation(val_images: pd.DataFrame, by_site: dict[str, pd.DataFrame], seed: int) -> dict[str, pd.DataFrame]:
    """Each site's share of the validation patients (patient level, label-stratified; by scanner when
    the sites' scanners differ)."""
    from mammo_fl.simulations.partition import partition_patients, patient_table

    names = sorted(by_site)
    patients = patient_table(val_images)
    if len(patients) < len(names):  # every site validates on a share of its own
        raise DataError(None, f"the validation set has {len(patients)} patients, fewer than the {len(names)} sites")
    scanners = _scanners(by_site)
    pid = val_images["patient_id"].astype(str)
    if "vendor" in patients.columns and len({frozenset(v) for v in scanners.values()}) > 1:
        site_of = _deal_by_scanner(patients, scanners, seed)
        return {name: val_images[pid.map(site_of) == name].reset_index(drop=True) for name in names}
    assignment = partition_patients(patients, len(names), "iid", seed)
    return {name: val_images[pid.map(assignment) == i].reset_index(drop=True) for i, name in enumerate(names)}


def validation_shares(sites_dir: Path) -> dict[str, set[str]]:
    """{site: its validation patient ids}, read back from the sites' saved splits."""
    from mammo_fl.client.site import SPLIT_FILE, STATE_SUBDIR, site_folders

    shares = {}
    for folder in site_folders(sites_dir):
        split = pd.read_csv(folder / STATE_SUBDIR / SPLIT_FILE, dtype=str)
        shares[folder.name] = set(split.loc[split["split"] == "val", "patient_id"])
    return shares


def materialise_sites(by_site: dict[str, pd.DataFrame], sites_dir: Path, val_images: pd.DataFrame,
                      cache_root: Path | None = None, seed: int = 0) -> list[Path]:
    """Write one folder per site (sorted names = Flower partition ids); returns the folders."""
    from mammo_fl.client.site import SPLIT_FILE, STATE_SUBDIR

    if sites_dir.exists():
        shutil.rmtree(sites_dir)  # a re-run must not keep a stale site or split
    names = sorted(by_site)
    val_share = _deal_validation(val_images, by_site, seed)
    val_ids = set(val_images["patient_id"].astype(str))
    folders = []
    for name in names:
        train, val = by_site[name], val_share[name]
        if val_ids & set(train["patient_id"].astype(str)):
            raise DataError(None, f"{name}: a validation patient is also a training patient")
        site_dir = sites_dir / name
        write_manifest(site_dir, pd.concat([train, val], ignore_index=True))
        state = site_dir / STATE_SUBDIR
        state.mkdir(parents=True, exist_ok=True)
        train_ids = list(dict.fromkeys(train["patient_id"].astype(str)))
        val_ids_here = list(dict.fromkeys(val["patient_id"].astype(str)))
        split = pd.DataFrame({"patient_id": train_ids + val_ids_here,
                              "split": ["train"] * len(train_ids) + ["val"] * len(val_ids_here)})
        split.to_csv(state / SPLIT_FILE, index=False)
        if cache_root is not None:
            _link_cache(state, cache_root)
        folders.append(site_dir)
    return folders
