"""CBIS-DDSM layout: four case-description CSVs + DICOM tree (NBIA descriptive or classic UID).

Mirrors the real release's quirks (docs/data.md describes the layout):
`breast_density` vs `breast density` headers, trailing newlines inside quoted path cells,
CSV paths in the classic form that does not match the descriptive tree, crop/mask file
order swapped on disk for some rows, mask and crop sometimes sharing one series folder,
and the full image duplicated when one view has both mass and calcification rows.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from mammo_fl.common.synth.dicom_io import DicomMeta, make_uid, write_dicom
from mammo_fl.common.synth.layouts.records import ground_truth_row, roi_rows
from mammo_fl.common.synth.render import RenderedImage

MASS_COLUMNS = [
    "patient_id", "breast_density", "left or right breast", "image view", "abnormality id", "abnormality type",
    "mass shape", "mass margins", "assessment", "pathology", "subtlety", "image file path",
    "cropped image file path", "ROI mask file path",
]
CALC_COLUMNS = [
    "patient_id", "breast density", "left or right breast", "image view", "abnormality id", "abnormality type",
    "calc type", "calc distribution", "assessment", "pathology", "subtlety", "image file path",
    "cropped image file path", "ROI mask file path",
]
CSV_NAMES = {
    ("mass", "Training"): "mass_case_description_train_set.csv",
    ("mass", "Test"): "mass_case_description_test_set.csv",
    ("calcification", "Training"): "calc_case_description_train_set.csv",
    ("calcification", "Test"): "calc_case_description_test_set.csv",
}
DESCRIPTORS = {
    "circumscribed": (("ROUND", "OVAL"), ("CIRCUMSCRIBED",)),
    "lobulated": (("LOBULATED", "OVAL-LOBULATED"), ("CIRCUMSCRIBED", "OBSCURED", "CIRCUMSCRIBED-OBSCURED")),
    "irregular": (("IRREGULAR", "IRREGULAR-ARCHITECTURAL_DISTORTION"), ("ILL_DEFINED", "MICROLOBULATED")),
    "spiculated": (("IRREGULAR", "IRREGULAR-ARCHITECTURAL_DISTORTION"), ("SPICULATED", "ILL_DEFINED-SPICULATED")),
    "coarse": (("COARSE", "DYSTROPHIC"), ("SCATTERED", "REGIONAL")),
    "round_regular": (("ROUND_AND_REGULAR", "PUNCTATE-ROUND_AND_REGULAR"), ("CLUSTERED", "SCATTERED")),
    "lucent_center": (("LUCENT_CENTER", "ROUND_AND_REGULAR-LUCENT_CENTER"), ("SCATTERED", "DIFFUSELY_SCATTERED")),
    "fine_pleomorphic": (("PLEOMORPHIC", "FINE_LINEAR_BRANCHING-PLEOMORPHIC"), ("CLUSTERED", "SEGMENTAL")),
    "fine_linear_branching": (("FINE_LINEAR_BRANCHING", "PLEOMORPHIC-FINE_LINEAR_BRANCHING"), ("LINEAR", "CLUSTERED-LINEAR")),
}
CROP_MARGIN = 0.15  # crops extend 15% beyond the ROI box, as in the release


def _prefix(kind: str, split: str) -> str:
    return f"{'Mass' if kind == 'mass' else 'Calc'}-{split}"


def _dated(rng: np.random.Generator) -> str:
    return f"{rng.integers(1, 13):02d}-{rng.integers(1, 29):02d}-{rng.choice([2016, 2017])}-DDSM-NA-{rng.integers(10000, 99999)}"


def _crop(pixels: np.ndarray, bbox: tuple[int, int, int, int]) -> np.ndarray:
    x0, y0, x1, y1 = bbox
    mx, my = int((x1 - x0) * CROP_MARGIN) + 2, int((y1 - y0) * CROP_MARGIN) + 2
    h, w = pixels.shape
    return pixels[max(y0 - my, 0) : min(y1 + my, h), max(x0 - mx, 0) : min(x1 + mx, w)].copy()


def write_image(rendered: RenderedImage, out_dir: Path, options: dict) -> dict:
    """Write the full image (once per abnormality type), its ROI masks and crops; return CSV rows."""
    spec = rendered.spec
    tree = options.get("cbis_tree", "descriptive")
    root = out_dir / "CBIS-DDSM"
    rng = np.random.default_rng([spec.seed, 11, spec.index])
    split, side = spec.extra["split"], spec.extra["side"]
    acq = rendered.acquired
    rows: list[dict] = []
    first_full_path = ""
    for kind in ("mass", "calcification"):
        ids = [i for i, roi in enumerate(rendered.rois) if roi.spec.kind == kind]
        if not ids:
            continue
        folder = f"{_prefix(kind, split)}_{spec.patient_id}_{side}_{spec.view}"
        study, series = make_uid(spec.seed, folder, "study"), make_uid(spec.seed, folder, "series")
        csv_full = f"{folder}/{study}/{series}/000000.dcm"
        if tree == "classic":
            full_path = root / csv_full
        else:
            full_path = root / folder / _dated(rng) / f"1.000000-full mammogram images-{rng.integers(10000, 99999)}" / "1-1.dcm"
        meta = DicomMeta(folder, study, series, make_uid(spec.seed, folder, "sop"), spec.laterality, spec.view,
                         "full mammogram images", rendered.pixel_spacing_mm, spec.profile,
                         photometric=acq.photometric, bits_stored=acq.bits_stored, window=acq.window)
        write_dicom(full_path, acq.pixels, meta)
        first_full_path = first_full_path or str(full_path.relative_to(out_dir))
        for abnormality_id, i in enumerate(ids, start=1):
            rows.append(_write_roi(rendered, i, abnormality_id, folder, csv_full, root, tree, rng))
    gt = ground_truth_row(rendered, first_full_path)
    return {"ground_truth": gt, "rois": roi_rows(rendered), "layout": rows}


def _write_roi(rendered: RenderedImage, i: int, abnormality_id: int, folder: str, csv_full: str,
               root: Path, tree: str, rng: np.random.Generator) -> dict:
    spec, roi = rendered.spec, rendered.rois[i]
    roi_folder = f"{folder}_{abnormality_id}"
    study, series = make_uid(spec.seed, roi_folder, "study"), make_uid(spec.seed, roi_folder, "series")
    mass = roi.spec.kind == "mass"
    # CSV convention: mass rows crop=000000 mask=000001, calc rows the reverse; the disk disagrees sometimes.
    csv_crop, csv_mask = ("000000.dcm", "000001.dcm") if mass else ("000001.dcm", "000000.dcm")
    swapped = rng.random() < 0.15
    disk_crop, disk_mask = (csv_mask, csv_crop) if swapped else (csv_crop, csv_mask)
    base = f"{roi_folder}/{study}/{series}"
    if tree == "classic":
        crop_path, mask_path = root / base / disk_crop, root / base / disk_mask
    else:
        dated = root / roi_folder / _dated(rng)
        if rng.random() < 0.25:  # both in one series folder, in either order
            shared = dated / f"1.000000-ROI mask images-{rng.integers(10000, 99999)}"
            names = ("1-1.dcm", "1-2.dcm") if rng.random() < 0.5 else ("1-2.dcm", "1-1.dcm")
            crop_path, mask_path = shared / names[0], shared / names[1]
        else:
            crop_path = dated / f"1.000000-cropped images-{rng.integers(10000, 99999)}" / "1-1.dcm"
            mask_path = dated / f"1.000000-ROI mask images-{rng.integers(10000, 99999)}" / "1-1.dcm"
    common = dict(patient_id=roi_folder, study_uid=study, laterality=spec.laterality, view=spec.view,
                  pixel_spacing_mm=rendered.pixel_spacing_mm, profile=spec.profile)
    mask_pixels = roi.mask.astype(np.uint8) * 255
    write_dicom(mask_path, mask_pixels, DicomMeta(series_uid=make_uid(spec.seed, roi_folder, "mask-series"),
                sop_uid=make_uid(spec.seed, roi_folder, "mask"), series_description="ROI mask images",
                bits_stored=8, instance_number=1 if disk_mask == "000000.dcm" else 2, **common))
    crop = _crop(rendered.acquired.pixels, roi.bbox)
    write_dicom(crop_path, crop, DicomMeta(series_uid=make_uid(spec.seed, roi_folder, "crop-series"),
                sop_uid=make_uid(spec.seed, roi_folder, "crop"), series_description="cropped images",
                photometric=rendered.acquired.photometric, bits_stored=rendered.acquired.bits_stored,
                instance_number=1 if disk_crop == "000000.dcm" else 2, **common))
    shape, margins = (str(rng.choice(d)) for d in DESCRIPTORS[roi.spec.morphology])
    subtlety = spec.extra["subtlety"][i] if i < len(spec.extra.get("subtlety", [])) else 3
    assessment = int(rng.integers(4, 6)) if roi.spec.malignant else int(rng.choice([2, 3, 4]))
    row = {
        "patient_id": spec.patient_id, "density": spec.density, "left or right breast": spec.extra["side"],
        "image view": spec.view, "abnormality id": abnormality_id, "abnormality type": roi.spec.kind,
        "descriptor_1": shape, "descriptor_2": margins, "assessment": assessment, "pathology": roi.spec.pathology,
        "subtlety": subtlety, "image file path": csv_full,
        "cropped image file path": f"{base}/{csv_crop}", "ROI mask file path": f"{base}/{csv_mask}",
    }
    # The real CSVs carry a trailing newline inside one quoted path cell per type.
    if mass:
        row["ROI mask file path"] += "\n"
    else:
        row["cropped image file path"] += "\n"
    return {"csv": CSV_NAMES[(roi.spec.kind, spec.extra["split"])], "row": row}


def finalize(out_dir: Path, layout_rows: list[dict], options: dict) -> None:
    """Write the four case-description CSVs (all four, even when one is empty)."""
    for (kind, _), name in CSV_NAMES.items():
        columns = MASS_COLUMNS if kind == "mass" else CALC_COLUMNS
        with open(out_dir / name, "w", newline="") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(columns)
            for item in layout_rows:
                if item["csv"] != name:
                    continue
                r = item["row"]
                writer.writerow([
                    r["patient_id"], r["density"], r["left or right breast"], r["image view"], r["abnormality id"],
                    r["abnormality type"], r["descriptor_1"], r["descriptor_2"], r["assessment"], r["pathology"],
                    r["subtlety"], r["image file path"], r["cropped image file path"], r["ROI mask file path"],
                ])
