"""The index directory: images.csv, rois.csv (annotated sets) and split.csv.

Schemas (docs/architecture.md):
- images.csv: image_id, image_path (absolute), patient_id, laterality (L|R), view (CC|MLO), label (0|1)
  plus optional extra columns kept as they are;
- rois.csv: image_id, roi_id, mask_path, abnormality (mass|calcification), pathology (BENIGN|MALIGNANT);
- split.csv: patient_id, split (train|val|test).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from mammo_fl.common.utils.atomic import atomic_path
from mammo_fl.common.utils.errors import DataError

IMAGE_COLUMNS = ["image_id", "image_path", "patient_id", "laterality", "view", "label"]
ROI_COLUMNS = ["image_id", "roi_id", "mask_path", "abnormality", "pathology"]
SPLIT_COLUMNS = ["patient_id", "split"]
SPLIT_NAMES = ("train", "val", "test")
IMAGES_FILE, ROIS_FILE, SPLIT_FILE = "images.csv", "rois.csv", "split.csv"
_ID_COLUMNS = ("image_id", "patient_id", "roi_id")


@dataclass
class IndexTables:
    images: pd.DataFrame
    rois: pd.DataFrame | None = None
    split: pd.DataFrame | None = None
    root: Path | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) found while indexing

    def images_with_split(self) -> pd.DataFrame:
        """images plus a `split` column (requires split.csv covering every patient)."""
        if self.split is None:
            raise DataError(self.root / SPLIT_FILE if self.root else None, "no split: run `mammo-data split` first")
        return attach_split(self.images, self.split, self.root)


def _missing(df: pd.DataFrame, columns: list[str]) -> list[str]:
    return [c for c in columns if c not in df.columns]


def validate_images(df: pd.DataFrame, source: str | Path | None = None) -> pd.DataFrame:
    """Check the images.csv schema and values; returns the frame with normalised dtypes."""
    missing = _missing(df, IMAGE_COLUMNS)
    if missing:
        raise DataError(source, f"images table lacks column(s) {', '.join(missing)}")
    out = df.copy()
    for col in ("image_id", "image_path", "patient_id", "laterality", "view"):
        out[col] = out[col].fillna("").astype(str)
    bad_label = ~out["label"].astype(str).isin(["0", "1", "0.0", "1.0"])
    if bad_label.any():
        raise DataError(source, f"label must be 0 or 1; bad rows: {_rows(out.index[bad_label])}")
    out["label"] = out["label"].astype(float).astype(int)
    dup = out["image_id"].duplicated(keep=False)
    if dup.any():
        raise DataError(source, f"duplicate image_id {sorted(set(out.loc[dup, 'image_id']))[:5]}")
    bad_lat = ~out["laterality"].isin(["L", "R", ""])
    if bad_lat.any():
        raise DataError(source, f"laterality must be L or R; bad rows: {_rows(out.index[bad_lat])}")
    return out


def validate_rois(df: pd.DataFrame, source: str | Path | None = None) -> pd.DataFrame:
    missing = _missing(df, ROI_COLUMNS)
    if missing:
        raise DataError(source, f"rois table lacks column(s) {', '.join(missing)}")
    out = df.copy()
    for col in ROI_COLUMNS:
        out[col] = out[col].fillna("").astype(str)
    bad = ~out["abnormality"].isin(["mass", "calcification"]) | ~out["pathology"].isin(["BENIGN", "MALIGNANT"])
    if bad.any():
        raise DataError(source, f"abnormality/pathology values invalid; bad rows: {_rows(out.index[bad])}")
    return out


def validate_split(df: pd.DataFrame, source: str | Path | None = None) -> pd.DataFrame:
    missing = _missing(df, SPLIT_COLUMNS)
    if missing:
        raise DataError(source, f"split table lacks column(s) {', '.join(missing)}")
    out = df[SPLIT_COLUMNS].copy()
    out["patient_id"] = out["patient_id"].astype(str)
    out["split"] = out["split"].astype(str).str.strip().str.lower()
    bad = ~out["split"].isin(SPLIT_NAMES)
    if bad.any():
        raise DataError(source, f"split must be train|val|test; bad rows: {_rows(out.index[bad])}")
    dup = out["patient_id"].duplicated(keep=False)
    if dup.any():
        raise DataError(source, f"patient listed twice: {sorted(set(out.loc[dup, 'patient_id']))[:5]}")
    return out


def attach_split(images: pd.DataFrame, split: pd.DataFrame, source: str | Path | None = None) -> pd.DataFrame:
    """images + `split` column; every patient must be in the split."""
    mapping = dict(zip(split["patient_id"].astype(str), split["split"]))
    out = images.copy()
    out["split"] = out["patient_id"].astype(str).map(mapping)
    if out["split"].isna().any():
        lost = sorted(set(out.loc[out["split"].isna(), "patient_id"]))
        raise DataError(source, f"{len(lost)} patient(s) not in split.csv (e.g. {lost[:3]}); re-run `mammo-data split --force`")
    return out


def _rows(index: pd.Index, limit: int = 8) -> str:
    """CSV line numbers (header is line 1) of offending rows."""
    lines = [str(int(i) + 2) for i in list(index)[:limit]]
    more = f" and {len(index) - limit} more" if len(index) > limit else ""
    return "lines " + ", ".join(lines) + more


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path, dtype={c: str for c in _ID_COLUMNS}, keep_default_na=False)
    except FileNotFoundError:
        raise DataError(path, "file not found") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(path, f"unreadable CSV: {exc}") from None


def load_index(directory: str | Path) -> IndexTables:
    """Read an index directory written by `mammo-data index` (and maybe `split`)."""
    root = Path(directory)
    if not (root / IMAGES_FILE).is_file():
        raise DataError(root, f"no {IMAGES_FILE}: not an index directory (run `mammo-data index` first)")
    images = validate_images(_read_csv(root / IMAGES_FILE), root / IMAGES_FILE)
    rois = validate_rois(_read_csv(root / ROIS_FILE), root / ROIS_FILE) if (root / ROIS_FILE).is_file() else None
    split = validate_split(_read_csv(root / SPLIT_FILE), root / SPLIT_FILE) if (root / SPLIT_FILE).is_file() else None
    return IndexTables(images=images, rois=rois, split=split, root=root)


def _write_csv_atomic(df: pd.DataFrame, dest: Path) -> None:
    with atomic_path(dest) as tmp:
        df.to_csv(tmp, index=False)


def write_index(
    directory: str | Path,
    images: pd.DataFrame,
    rois: pd.DataFrame | None = None,
    split: pd.DataFrame | None = None,
) -> Path:
    """Write images.csv (+ rois.csv, split.csv when given) atomically; returns the directory."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    images = validate_images(images)
    ordered = IMAGE_COLUMNS + [c for c in images.columns if c not in IMAGE_COLUMNS]
    _write_csv_atomic(images[ordered], root / IMAGES_FILE)
    if rois is not None:
        rois = validate_rois(rois)
        _write_csv_atomic(rois[ROI_COLUMNS + [c for c in rois.columns if c not in ROI_COLUMNS]], root / ROIS_FILE)
    elif (root / ROIS_FILE).exists():
        (root / ROIS_FILE).unlink()  # a re-index without ROIs must not keep stale ones
    if split is not None:
        write_split(root, split)
    return root


def write_split(directory: str | Path, split: pd.DataFrame) -> Path:
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    dest = root / SPLIT_FILE
    _write_csv_atomic(validate_split(split), dest)
    return dest


def load_split(directory: str | Path) -> pd.DataFrame | None:
    path = Path(directory) / SPLIT_FILE
    return validate_split(_read_csv(path), path) if path.is_file() else None


def summarise(images: pd.DataFrame) -> dict[str, int]:
    """Counts printed by the CLI and used in reports."""
    return {
        "images": int(len(images)),
        "patients": int(images["patient_id"].nunique()) if len(images) else 0,
        "positives": int(images["label"].astype(int).sum()) if len(images) else 0,
    }
