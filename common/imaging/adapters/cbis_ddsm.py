"""CBIS-DDSM: the four case-description CSVs + the DICOM download -> images / rois.

DICOMs are found by their case folder name (`Mass-Training_P_00001_LEFT_CC[_N]`,
any depth), never by the CSV paths, so both the NBIA-retriever layout
(`CBIS-DDSM/<case>/<date-study>/<n-description-id>/1-1.dcm`) and the classic UID layout
(`<case>/<StudyUID>/<SeriesUID>/00000N.dcm`) work. ROI masks are recognised by shape
(equal to the full mammogram), because the CSVs' crop/mask columns are often swapped.
Several abnormalities (rows) per view are merged into one image, deduplicated by
(patient, side, view) across the mass and calc CSVs; image label = any MALIGNANT.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from mammo_fl.common.imaging.dicom import read_header
from mammo_fl.common.utils.errors import DataError
from mammo_fl.common.imaging.index import IMAGE_COLUMNS, ROI_COLUMNS, IndexTables

CASE_FOLDER = re.compile(
    r"^(?P<prefix>(?:Mass|Calc)-(?:Training|Test))_(?P<patient>P_\d+)_(?P<side>LEFT|RIGHT)_(?P<view>CC|MLO)"
    r"(?:_(?P<abn>\d+))?$",
    re.IGNORECASE,
)
CSV_NAME = re.compile(r"^(mass|calc)_case_description_(train|test)_set\.csv$", re.IGNORECASE)
REQUIRED = ["patient_id", "left_or_right_breast", "image_view", "abnormality_id", "abnormality_type", "pathology",
            "image_file_path"]


@dataclass(frozen=True)
class CaseFile:
    path: Path
    folder: str  # canonical case folder name, e.g. Mass-Training_P_00001_LEFT_CC_1
    is_roi: bool
    description: str
    shape: tuple[int, int] | None


def _canonical(match: re.Match[str]) -> str:
    prefix = "-".join(part.capitalize() for part in match["prefix"].split("-"))
    base = f"{prefix}_{match['patient'].upper()}_{match['side'].upper()}_{match['view'].upper()}"
    return f"{base}_{int(match['abn'])}" if match["abn"] else base


def _case_folder(path: Path, src: Path) -> str | None:
    for part in reversed(path.relative_to(src).parts[:-1]):
        m = CASE_FOLDER.match(part.strip())
        if m:
            return _canonical(m)
    return None


def find_csvs(src: Path) -> list[Path]:
    return sorted(p for p in src.rglob("*.csv") if CSV_NAME.match(p.name))


def read_case_csv(path: Path) -> pd.DataFrame:
    """One case-description CSV with normalised column names and stripped cells."""
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(path, f"unreadable CSV: {' '.join(str(exc).split())}") from None
    # `breast_density` (mass) vs `breast density` (calc), `ROI mask file path`, ...
    df.columns = [re.sub(r"\s+", "_", str(c).strip().lower()) for c in df.columns]
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise DataError(path, f"not a CBIS-DDSM case-description CSV: missing column(s) {', '.join(missing)}")
    for col in df.columns:
        df[col] = df[col].astype(str).str.strip()  # trailing newlines inside quoted paths
    kind, split = CSV_NAME.match(path.name).groups()  # type: ignore[union-attr]
    df["source_csv"] = path.name
    df["official_split"] = split.lower()
    df["csv_kind"] = kind.lower()
    return df


def scan_dicoms(src: Path, progress: bool = True) -> tuple[dict[str, list[CaseFile]], list[tuple[str, str]]]:
    """Index every .dcm by case folder, series description and pixel shape (headers only)."""
    files: dict[str, list[CaseFile]] = defaultdict(list)
    skipped: list[tuple[str, str]] = []
    paths = sorted(p for p in src.rglob("*") if p.suffix.lower() == ".dcm" and p.is_file())
    for path in tqdm(paths, desc="scan DICOM headers", unit="file", disable=not progress):
        try:
            header = read_header(path)
        except DataError as exc:
            skipped.append((str(path), exc.cause))
            continue
        folder = _case_folder(path, src)
        if folder is None:  # fall back on the PatientID tag, which holds the case name
            m = CASE_FOLDER.match(header.patient_id)
            folder = _canonical(m) if m else None
        if folder is None:
            skipped.append((str(path), "not inside a CBIS-DDSM case folder (e.g. Mass-Training_P_00001_LEFT_CC)"))
            continue
        m = CASE_FOLDER.match(folder)
        files[folder].append(CaseFile(path, folder, bool(m and m["abn"]), header.series_description.lower(), header.shape))
    return files, skipped


def _full_image(folder_files: list[CaseFile]) -> CaseFile | None:
    full = [f for f in folder_files if not f.is_roi]
    preferred = [f for f in full if "full" in f.description]
    return (preferred or full or [None])[0]


def _pick_mask(candidates: list[CaseFile], shape: tuple[int, int] | None) -> CaseFile | None:
    """The ROI mask is the file whose shape equals the full mammogram's."""
    same = [c for c in candidates if shape is not None and c.shape == shape]
    if len(same) > 1:
        labelled = [c for c in same if "mask" in c.description]
        same = labelled or same
    return same[0] if same else None


def _pathology(value: str) -> str:
    return "MALIGNANT" if value.upper() == "MALIGNANT" else "BENIGN"


def _full_folder(row: pd.Series) -> str | None:
    first = row["image_file_path"].replace("\\", "/").split("/")[0].strip()
    m = CASE_FOLDER.match(first)
    if m:
        return _canonical(m)
    prefix = f"{row['csv_kind'].capitalize()}-{'Training' if row['official_split'] == 'train' else 'Test'}"
    m = CASE_FOLDER.match(f"{prefix}_{row['patient_id']}_{row['left_or_right_breast']}_{row['image_view']}")
    return _canonical(m) if m else None


def build_index(src: Path, out_dir: Path | None = None, progress: bool = True) -> IndexTables:
    src = Path(src)
    if not src.is_dir():
        raise DataError(src, "not a directory")
    csvs = find_csvs(src)
    if not csvs:
        raise DataError(src, "no CBIS-DDSM case-description CSVs (mass_/calc_case_description_{train,test}_set.csv)")
    rows = pd.concat([read_case_csv(p) for p in csvs], ignore_index=True)
    files, skipped = scan_dicoms(src, progress)

    by_view: dict[tuple[str, str, str], list[pd.Series]] = defaultdict(list)
    for _, row in rows.iterrows():
        side, view = row["left_or_right_breast"].upper(), row["image_view"].upper()
        if side not in ("LEFT", "RIGHT") or view not in ("CC", "MLO"):
            skipped.append((row["source_csv"], f"row for {row['patient_id']}: bad side/view {side!r}/{view!r}"))
            continue
        by_view[(row["patient_id"], side, view)].append(row)

    images, rois = [], []
    for (patient, side, view), view_rows in sorted(by_view.items()):
        folders = sorted({f for f in (_full_folder(r) for r in view_rows) if f})
        full = next((f for f in (_full_image(files.get(name, [])) for name in folders) if f), None)
        if full is None:
            skipped.append((str(src / (folders[0] if folders else patient)), "full mammogram DICOM not found"))
            continue
        image_id = f"{patient}_{side[0]}_{view}"
        for row in view_rows:
            roi_folder = f"{_full_folder(row)}_{int(row['abnormality_id'] or 0)}"
            candidates = files.get(roi_folder, [])
            mask = _pick_mask(candidates, full.shape)
            if mask is None:
                why = "ROI folder not found" if not candidates else (
                    f"no ROI mask with the full image's shape {full.shape} among "
                    f"{[c.shape for c in candidates]}")
                skipped.append((str(src / roi_folder), why))
                continue
            kind = "mass" if "mass" in row["abnormality_type"].lower() else "calcification"
            rois.append({
                "image_id": image_id, "roi_id": f"{image_id}_{kind}{row['abnormality_id']}", "mask_path": str(mask.path.resolve()),
                "abnormality": kind, "pathology": _pathology(row["pathology"]), "pathology_raw": row["pathology"],
                "assessment": row.get("assessment", ""), "subtlety": row.get("subtlety", ""),
            })
        density = next((r.get("breast_density", "") for r in view_rows if r.get("breast_density", "")), "")
        images.append({
            "image_id": image_id, "image_path": str(full.path.resolve()), "patient_id": patient,
            "laterality": side[0], "view": view,
            "label": int(any(r["pathology"].upper() == "MALIGNANT" for r in view_rows)),
            "density": density, "abnormalities": len(view_rows), "official_split": view_rows[0]["official_split"],
        })

    images_df = pd.DataFrame(images, columns=IMAGE_COLUMNS + ["density", "abnormalities", "official_split"])
    rois_df = pd.DataFrame(rois, columns=ROI_COLUMNS + ["pathology_raw", "assessment", "subtlety"])
    if not rois_df.empty:
        dup = rois_df["roi_id"].duplicated(keep=False)
        rois_df.loc[dup, "roi_id"] = rois_df.loc[dup, "roi_id"] + "_" + rois_df.index[dup].astype(str)
    return IndexTables(images=images_df, rois=rois_df, root=Path(out_dir) if out_dir else None, skipped=skipped)
