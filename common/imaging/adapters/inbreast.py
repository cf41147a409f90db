"""INbreast: `INbreast.csv` (semicolon separated) + `AllDICOMs/` + `AllXML/` -> images / rois.

- patient = the 16-hex hash in `<FileName>_<hash>_MG_<L|R>_<CC|ML>_ANON.dcm` (the CSV's
  patient id is literally `removed`); `ML` means MLO.
- labels as in Shen et al.: BI-RADS 1-2 -> 0, 4a/4b/4c/5/6 -> 1, BI-RADS 3 excluded.
- XML plist ROIs are rasterised to PNG masks under `<out>/masks/`: each `Mass` polygon is
  one ROI; `Cluster` polygons are calcification ROIs; single `Calcification` marks (1-2
  points, drawn as small discs) are grouped into clusters by single linkage, one ROI each.
  INbreast has no lesion pathology: ROI pathology follows the image label (documented).
"""

from __future__ import annotations

import plistlib
import re
from pathlib import Path
from xml.parsers.expat import ExpatError

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from mammo_fl.common.imaging.dicom import read_header
from mammo_fl.common.imaging.png16 import write_png
from mammo_fl.common.utils.errors import DataError
from mammo_fl.common.imaging.index import IMAGE_COLUMNS, ROI_COLUMNS, IndexTables

DICOM_NAME = re.compile(r"^(?P<id>\d+)_(?P<hash>[0-9A-Za-z]+)_MG_(?P<side>[LR])_(?P<view>CC|MLO|ML)_ANON\.dcm$",
                        re.IGNORECASE)
BIRADS_LABEL = {"1": 0, "2": 0, "4a": 1, "4b": 1, "4c": 1, "4": 1, "5": 1, "6": 1}
EXCLUDED_BIRADS = {"3"}
CLUSTER_FRACTION = 0.025  # calcifications closer than this x the longer image side form one cluster
DISC_FRACTION = 0.0015  # radius of a point calcification, x the longer side (>= 2 px)
_POINT = re.compile(r"\(\s*([-+0-9.eE]+)\s*,\s*([-+0-9.eE]+)\s*(?:,[^)]*)?\)")


def find_csv(src: Path) -> Path:
    found = sorted(p for p in src.rglob("*") if p.name.lower() == "inbreast.csv")
    if not found:
        raise DataError(src, "no INbreast.csv found (expected the release folder with AllDICOMs/ and AllXML/)")
    return found[0]


def read_inbreast_csv(path: Path) -> pd.DataFrame:
    try:
        df = pd.read_csv(path, sep=";", dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(path, f"unreadable CSV: {' '.join(str(exc).split())}") from None
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in ("Laterality", "View", "File Name", "Bi-Rads") if c not in df.columns]
    if missing:
        raise DataError(path, f"not INbreast.csv: missing column(s) {', '.join(missing)} (is it ';'-separated?)")
    for col in df.columns:
        df[col] = df[col].astype(str).str.strip()
    df["File Name"] = df["File Name"].str.replace(r"\.0$", "", regex=True)
    return df[df["File Name"] != ""]


def parse_points(values: list[str]) -> np.ndarray:
    """`["(x, y)", ...]` in pixels (x = column) -> float array (n, 2)."""
    pts = []
    for v in values:
        m = _POINT.search(str(v))
        if m:
            pts.append((float(m.group(1)), float(m.group(2))))
    return np.array(pts, dtype=float).reshape(-1, 2)


def read_xml_rois(path: Path) -> list[tuple[str, np.ndarray]]:
    """(name, points) for every ROI of the first image in an OsiriX XML plist."""
    try:
        with open(path, "rb") as fh:
            data = plistlib.load(fh)
        rois = data["Images"][0]["ROIs"]
    except (plistlib.InvalidFileException, ExpatError, KeyError, IndexError, TypeError, ValueError) as exc:
        raise DataError(path, f"unreadable ROI plist: {type(exc).__name__} {exc}") from None
    except OSError as exc:
        raise DataError(path, f"cannot read: {exc.strerror}") from None
    return [(str(r.get("Name", "")).strip(), parse_points(r.get("Point_px", []))) for r in rois]


def _draw(shape: tuple[int, int], polygons: list[np.ndarray], discs: list[np.ndarray], radius: float) -> np.ndarray:
    im = Image.new("L", (shape[1], shape[0]), 0)
    draw = ImageDraw.Draw(im)
    for poly in polygons:
        draw.polygon([tuple(p) for p in poly], fill=255, outline=255)
    for pts in discs:
        for x, y in pts:
            draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=255)
    return np.asarray(im)


def cluster_points(centres: np.ndarray, distance: float) -> np.ndarray:
    """Single-linkage cluster labels (0..k-1): points within `distance` of each other chain
    into one cluster (union-find over the pairwise distances; n is at most a few hundred)."""
    n = len(centres)
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    if n > 1:
        d = np.sqrt(((centres[:, None, :] - centres[None, :, :]) ** 2).sum(-1))
        for i, j in zip(*np.nonzero(np.triu(d <= distance, k=1))):
            parent[root(int(i))] = root(int(j))
    roots = [root(i) for i in range(n)]
    order = {r: k for k, r in enumerate(dict.fromkeys(roots))}
    return np.array([order[r] for r in roots], dtype=int)


def rasterise_rois(
    rois: list[tuple[str, np.ndarray]], shape: tuple[int, int]
) -> tuple[list[tuple[str, np.ndarray]], int]:
    """-> ([(abnormality, uint8 mask)], number of ROIs ignored: other findings / no points)."""
    side = max(shape)
    radius = max(2.0, DISC_FRACTION * side)
    masks: list[tuple[str, np.ndarray]] = []
    calcs: list[np.ndarray] = []
    ignored = 0
    for name, pts in rois:
        lower = name.lower()
        if len(pts) == 0:
            ignored += 1
        elif lower == "mass" and len(pts) >= 3:
            masks.append(("mass", _draw(shape, [pts], [], radius)))
        elif lower == "cluster" and len(pts) >= 3:
            masks.append(("calcification", _draw(shape, [pts], [], radius)))
        elif lower.startswith("calcification"):
            calcs.append(pts)
        else:
            ignored += 1
    if calcs:
        labels = cluster_points(np.array([p.mean(axis=0) for p in calcs]), CLUSTER_FRACTION * side)
        for k in range(int(labels.max()) + 1):
            members = [calcs[i] for i in np.nonzero(labels == k)[0]]
            polygons = [p for p in members if len(p) >= 3]
            masks.append(("calcification", _draw(shape, polygons, members, radius)))
    return [(kind, m) for kind, m in masks if m.any()], ignored


def build_index(src: Path, out_dir: Path | None = None, progress: bool = True) -> IndexTables:
    from tqdm import tqdm

    src = Path(src)
    if not src.is_dir():
        raise DataError(src, "not a directory")
    if out_dir is None:
        raise DataError(src, "INbreast indexing needs an output directory for the rasterised masks")
    csv_path = find_csv(src)
    base = csv_path.parent
    table = read_inbreast_csv(csv_path)
    skipped: list[tuple[str, str]] = []
    dicoms: dict[str, tuple[Path, re.Match[str]]] = {}
    for path in sorted(p for p in base.rglob("*") if p.suffix.lower() == ".dcm"):
        m = DICOM_NAME.match(path.name)
        if not m:
            skipped.append((str(path), "file name is not <FileName>_<hash>_MG_<L|R>_<CC|ML>_ANON.dcm"))
            continue
        dicoms[m["id"]] = (path, m)
    listed = set(table["File Name"])
    skipped += [(str(p), "not listed in INbreast.csv") for fid, (p, _) in sorted(dicoms.items()) if fid not in listed]

    xml_dir = next((d for d in base.rglob("*") if d.is_dir() and d.name.lower() == "allxml"), base / "AllXML")
    mask_dir = Path(out_dir) / "masks"
    images, rois = [], []
    for _, row in tqdm(table.iterrows(), total=len(table), desc="index INbreast", unit="image", disable=not progress):
        fid, birads = row["File Name"], row["Bi-Rads"].strip().lower()
        if fid not in dicoms:
            skipped.append((str(csv_path), f"File Name {fid}: no DICOM in AllDICOMs"))
            continue
        path, m = dicoms[fid]
        if birads in EXCLUDED_BIRADS:
            skipped.append((str(path), "excluded: BI-RADS 3 (as in Shen et al.)"))
            continue
        if birads not in BIRADS_LABEL:
            skipped.append((str(path), f"unknown BI-RADS value {row['Bi-Rads']!r}"))
            continue
        try:
            shape = read_header(path).shape
        except DataError as exc:
            skipped.append((str(path), exc.cause))
            continue
        label = BIRADS_LABEL[birads]
        view = row["View"].upper() or m["view"].upper()
        view = "MLO" if view in ("ML", "MLO") else view
        ignored = 0
        xml = xml_dir / f"{fid}.xml"
        if xml.is_file() and shape:
            try:
                masks, ignored = rasterise_rois(read_xml_rois(xml), shape)
            except DataError as exc:
                skipped.append((exc.path or str(xml), exc.cause))
                masks = []
            for k, (kind, mask) in enumerate(masks):
                dest = mask_dir / f"{fid}_{k}.png"
                write_png(dest, mask)
                rois.append({"image_id": fid, "roi_id": f"{fid}_{k}", "mask_path": str(dest.resolve()),
                             "abnormality": kind, "pathology": "MALIGNANT" if label else "BENIGN",
                             "pathology_source": "image BI-RADS"})
        images.append({
            "image_id": fid, "image_path": str(path.resolve()), "patient_id": m["hash"].lower(),
            "laterality": (row["Laterality"].upper() or m["side"].upper())[:1], "view": view, "label": label,
            "birads": birads, "density": row.get("ACR", ""), "ignored_rois": ignored,
        })
    images_df = pd.DataFrame(images, columns=IMAGE_COLUMNS + ["birads", "density", "ignored_rois"])
    rois_df = pd.DataFrame(rois, columns=ROI_COLUMNS + ["pathology_source"])
    return IndexTables(images=images_df, rois=rois_df, root=Path(out_dir), skipped=skipped)
