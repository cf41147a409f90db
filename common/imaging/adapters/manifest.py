"""Generic hospital manifest: `<data_dir>/manifest.csv`.

Columns: `image_path` (relative to data_dir), `patient_id`, `label` (0/1 or the words
malignant / benign / normal), optional `laterality` (L/R/LEFT/RIGHT), `view` (CC/MLO/ML),
and any extra columns (`vendor`, ...), which are kept. Validation is strict: every problem
is reported at once, naming the offending CSV lines (the header is line 1).
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from mammo_fl.common.imaging.dicom import normalise_view, read_header
from mammo_fl.common.utils.errors import DataError
from mammo_fl.common.imaging.index import IMAGE_COLUMNS, IndexTables

MANIFEST_NAME = "manifest.csv"
REQUIRED = ("image_path", "patient_id", "label")
LABEL_WORDS = {"1": 1, "0": 0, "1.0": 1, "0.0": 0, "malignant": 1, "benign": 0, "normal": 0}
LATERALITY_WORDS = {"L": "L", "LEFT": "L", "R": "R", "RIGHT": "R"}


def _lines(index: pd.Index | list[int], limit: int = 8) -> str:
    numbers = [str(int(i) + 2) for i in list(index)[:limit]]
    more = f" and {len(index) - limit} more" if len(index) > limit else ""
    return ", ".join(numbers) + more


def image_id_for(relative: str) -> str:
    """A readable, file-name-safe id from the relative path (extension dropped)."""
    stem = re.sub(r"\.(dcm|dicom)$", "", relative.strip().replace("\\", "/"), flags=re.IGNORECASE)
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("_") or "image"


def _read(manifest: Path) -> pd.DataFrame:
    if not manifest.is_file():
        raise DataError(manifest, "no manifest.csv in this data folder (columns image_path, patient_id, label)")
    try:
        df = pd.read_csv(manifest, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(manifest, f"unreadable CSV: {' '.join(str(exc).split())}") from None
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise DataError(manifest, f"missing column(s) {', '.join(missing)} (required: {', '.join(REQUIRED)})")
    if df.empty:
        raise DataError(manifest, "no rows")
    for col in df.columns:
        df[col] = df[col].astype(str).str.strip()
    return df


def _check_values(df: pd.DataFrame, data_dir: Path) -> list[str]:
    """All value problems, each naming its lines."""
    problems: list[str] = []
    empty_path = df["image_path"] == ""
    if empty_path.any():
        problems.append(f"empty image_path at line(s) {_lines(df.index[empty_path])}")
    empty_patient = df["patient_id"] == ""
    if empty_patient.any():
        problems.append(f"empty patient_id at line(s) {_lines(df.index[empty_patient])}")
    labels = df["label"].str.lower().map(LABEL_WORDS)
    bad = labels.isna()
    if bad.any():
        shown = ", ".join(f"{i + 2} ({df.at[i, 'label']!r})" for i in df.index[bad][:8])
        problems.append(f"unknown label value(s) at line(s) {shown}; use 0/1 or malignant/benign/normal")
    if "laterality" in df.columns:
        lat = df["laterality"].str.upper()
        bad_lat = (lat != "") & ~lat.isin(list(LATERALITY_WORDS))
        if bad_lat.any():
            problems.append(f"laterality must be L/R/LEFT/RIGHT at line(s) {_lines(df.index[bad_lat])}")
    if "view" in df.columns:
        views = df["view"].map(normalise_view)
        bad_view = views.notna() & ~views.isin(["CC", "MLO"])
        if bad_view.any():
            problems.append(f"view must be CC or MLO (ML accepted) at line(s) {_lines(df.index[bad_view])}")
    keys = df["image_path"].map(lambda p: str((data_dir / p).resolve()) if p else "")
    dup = (keys != "") & keys.duplicated(keep=False)
    if dup.any():
        conflict, repeat = [], []
        for _, group in df[dup].groupby(keys[dup], sort=False):
            target = conflict if labels[group.index].nunique(dropna=False) > 1 else repeat
            target.append(f"{group['image_path'].iloc[0]} (lines {_lines(group.index)})")
        if conflict:
            problems.append(f"same image with different labels: {'; '.join(conflict[:5])}")
        if repeat:
            problems.append(f"duplicated rows: {'; '.join(repeat[:5])}")
    exists = df["image_path"].map(lambda p: bool(p) and (data_dir / p).is_file())
    missing = ~exists & ~empty_path
    if missing.any():
        shown = ", ".join(f"{i + 2} ({df.at[i, 'image_path']})" for i in df.index[missing][:5])
        more = f" and {int(missing.sum()) - 5} more" if missing.sum() > 5 else ""
        problems.append(f"missing image file(s) at line(s) {shown}{more}")
    return problems


def _header_value(path: Path, field: str) -> str:
    """Laterality / view from the DICOM header when the manifest has no column; '' if unknown."""
    try:
        header = read_header(path)
    except DataError:
        return ""  # an unreadable file is reported by the cache build, not here
    value = header.laterality if field == "laterality" else header.view
    return value if value in ("L", "R", "CC", "MLO") else ""


def read_manifest(data_dir: str | Path) -> pd.DataFrame:
    """Validate `<data_dir>/manifest.csv` and return it in the images.csv schema (absolute paths)."""
    data_dir = Path(data_dir).resolve()
    manifest = data_dir / MANIFEST_NAME
    df = _read(manifest)
    problems = _check_values(df, data_dir)
    if problems:
        raise DataError(manifest, " | ".join(problems))
    out = pd.DataFrame({
        "image_path": [str((data_dir / p).resolve()) for p in df["image_path"]],
        "patient_id": df["patient_id"].values,
        "label": df["label"].str.lower().map(LABEL_WORDS).astype(int).values,
    })
    ids = df["image_path"].map(image_id_for)
    clash = ids.duplicated(keep=False)
    ids[clash] = [f"{i}_{n}" for n, i in zip(df.index[clash], ids[clash])]  # rare: a/b.dcm vs a_b.dcm
    out.insert(0, "image_id", ids.values)
    if "laterality" in df.columns:
        out["laterality"] = df["laterality"].str.upper().map(lambda v: LATERALITY_WORDS.get(v, "")).values
    else:
        out["laterality"] = [_header_value(Path(p), "laterality") for p in out["image_path"]]
    if "view" in df.columns:
        out["view"] = df["view"].map(lambda v: normalise_view(v) or "").values
    else:
        out["view"] = [_header_value(Path(p), "view") for p in out["image_path"]]
    extras = [c for c in df.columns if c not in (*REQUIRED, "laterality", "view")]
    for col in extras:
        out[col] = df[col].values
    return out[IMAGE_COLUMNS + extras].reset_index(drop=True)


def build_index(src: str | Path, out_dir: str | Path | None = None) -> IndexTables:
    """Manifest folder -> IndexTables (no ROIs). Strict: a bad manifest is one DataError."""
    images = read_manifest(src)
    return IndexTables(images=images, rois=None, split=None, root=Path(out_dir) if out_dir else None)
