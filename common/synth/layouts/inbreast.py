"""INbreast layout: `INbreast Release 1.0/{AllDICOMs,AllXML}` + semicolon `INbreast.csv`.

File names `<FileName>_<patient-hash>_MG_<L|R>_<CC|ML>_ANON.dcm` (ML, not MLO), OsiriX
XML plists with `Mass` polygons, `Cluster` outlines and one- or few-point
`Calcification` ROIs, BI-RADS as text (`4a`..), and one ACR cell with stray whitespace.
"""

from __future__ import annotations

import plistlib
from pathlib import Path

import numpy as np

from mammo_fl.common.synth.dicom_io import DicomMeta, make_uid, write_dicom
from mammo_fl.common.synth.layouts.records import ground_truth_row, roi_rows, write_csv
from mammo_fl.common.synth.render import RenderedImage

RELEASE_DIR = "INbreast Release 1.0"
CSV_COLUMNS = ["Patient ID", "Patient age", "Laterality", "View", "Acquisition date", "File Name", "ACR", "Bi-Rads"]
POLYGON_TYPE, POINT_TYPE = 15, 19  # OsiriX ROI type codes (polygon, point)


def dicom_name(rendered: RenderedImage) -> str:
    spec = rendered.spec
    view = "ML" if spec.view == "MLO" else spec.view
    return f"{spec.image_id}_{spec.patient_id}_MG_{spec.laterality}_{view}_ANON.dcm"


def _roi_dict(name: str, points: np.ndarray, spacing: float, index: int, pixels: np.ndarray) -> dict:
    xs, ys = points[:, 0], points[:, 1]
    h, w = pixels.shape
    inside = pixels[np.clip(ys.astype(int), 0, h - 1), np.clip(xs.astype(int), 0, w - 1)].astype(float)
    area_px = 0.5 * abs(float(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1)))) if len(xs) > 2 else 0.0
    cx, cy = float(xs.mean()), float(ys.mean())
    return {
        "Area": area_px * spacing * spacing,
        "Center": f"({cx * spacing:.6f}, {cy * spacing:.6f}, 0.000000)",
        "Dev": float(inside.std()), "IndexInImage": index, "Max": float(inside.max()), "Mean": float(inside.mean()),
        "Min": float(inside.min()), "Name": name, "NumberOfPoints": int(len(xs)),
        "Point_mm": [f"({x * spacing:.6f}, {y * spacing:.6f}, 0.000000)" for x, y in zip(xs, ys)],
        "Point_px": [f"({x:.2f}, {y:.2f})" for x, y in zip(xs, ys)],
        "Total": float(inside.sum()), "Type": POLYGON_TYPE if len(xs) > 2 else POINT_TYPE,
    }


def _xml_rois(rendered: RenderedImage) -> list[dict]:
    spacing, pixels = rendered.pixel_spacing_mm, rendered.acquired.pixels
    out: list[dict] = []
    for roi in rendered.rois:
        if roi.spec.kind == "mass":
            out.append(_roi_dict("Mass", roi.polygon[::3], spacing, len(out), pixels))
            continue
        out.append(_roi_dict("Cluster", roi.polygon[::2], spacing, len(out), pixels))
        for x, y, r in roi.specks:
            if 2 * r < 6:  # small specks are annotated with a single point
                pts = np.array([[x, y]])
            else:
                a = np.linspace(0, 2 * np.pi, 8, endpoint=False)
                pts = np.stack([x + r * np.cos(a), y + r * np.sin(a)], axis=1)
            out.append(_roi_dict("Calcification", pts, spacing, len(out), pixels))
    return out


def write_image(rendered: RenderedImage, out_dir: Path, options: dict) -> dict:
    spec, acq = rendered.spec, rendered.acquired
    release = out_dir / RELEASE_DIR
    name = dicom_name(rendered)
    path = release / "AllDICOMs" / name
    study = make_uid(spec.seed, "inbreast", spec.patient_id, "study")
    meta = DicomMeta(spec.patient_id, study, make_uid(spec.seed, spec.image_id, "series"),
                     make_uid(spec.seed, spec.image_id, "sop"), spec.laterality, spec.view, "full mammogram images",
                     rendered.pixel_spacing_mm, spec.profile, study_date=spec.extra["acquisition_date"] + "15",
                     photometric=acq.photometric, bits_stored=acq.bits_stored, window=acq.window)
    write_dicom(path, acq.pixels, meta)
    if rendered.rois:
        rois = _xml_rois(rendered)
        plist = {"Images": [{"ImageHeight": spec.height, "ImageWidth": spec.width, "ImageIndex": 0,
                             "NumberOfROIs": len(rois), "ROIs": rois}]}
        xml_path = release / "AllXML" / f"{spec.image_id}.xml"
        xml_path.parent.mkdir(parents=True, exist_ok=True)
        with open(xml_path, "wb") as fh:
            plistlib.dump(plist, fh, fmt=plistlib.FMT_XML)
    csv_row = {"Patient ID": "removed", "Patient age": "removed", "Laterality": spec.laterality, "View": spec.view,
               "Acquisition date": spec.extra["acquisition_date"], "File Name": spec.image_id,
               "ACR": str(spec.density), "Bi-Rads": spec.birads}
    return {"ground_truth": ground_truth_row(rendered, str(path.relative_to(out_dir))), "rois": roi_rows(rendered),
            "layout": [csv_row]}


def finalize(out_dir: Path, layout_rows: list[dict], options: dict) -> None:
    rows = [dict(r) for r in layout_rows]
    if rows:  # the real sheet has one ACR cell with stray whitespace
        rows[len(rows) // 3]["ACR"] = rows[len(rows) // 3]["ACR"] + " "
    (out_dir / RELEASE_DIR / "AllDICOMs").mkdir(parents=True, exist_ok=True)
    (out_dir / RELEASE_DIR / "AllXML").mkdir(parents=True, exist_ok=True)
    write_csv(out_dir / RELEASE_DIR / "INbreast.csv", CSV_COLUMNS, rows, delimiter=";")
