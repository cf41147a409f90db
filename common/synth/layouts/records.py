"""Ground-truth records shared by every layout (`ground_truth.csv`, `ground_truth_rois.csv`)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from mammo_fl.common.synth.render import RenderedImage

GROUND_TRUTH_COLUMNS = [
    "image_id", "patient_id", "label", "lesions", "n_lesions", "image_path", "laterality", "view",
    "site", "vendor", "domain", "density", "birads", "photometric", "height", "width",
]
ROI_COLUMNS = ["image_id", "roi_id", "abnormality", "pathology", "morphology", "x0", "y0", "x1", "y1",
               "mask_pixels", "polygon"]


def lesion_summary(rendered: RenderedImage) -> str:
    """`mass:spiculated:MALIGNANT;calcification:coarse:BENIGN` (empty for normal images)."""
    return ";".join(f"{r.spec.kind}:{r.spec.morphology}:{r.spec.pathology}" for r in rendered.rois)


def ground_truth_row(rendered: RenderedImage, image_path: str) -> dict:
    spec = rendered.spec
    return {
        "image_id": spec.image_id, "patient_id": spec.patient_id, "label": spec.label,
        "lesions": lesion_summary(rendered), "n_lesions": len(rendered.rois), "image_path": image_path,
        "laterality": spec.laterality, "view": spec.view, "site": spec.site, "vendor": spec.profile.name,
        "domain": spec.profile.domain, "density": spec.density, "birads": spec.birads,
        "photometric": rendered.acquired.photometric, "height": spec.height, "width": spec.width,
    }


def roi_rows(rendered: RenderedImage) -> list[dict]:
    rows = []
    for i, roi in enumerate(rendered.rois, start=1):
        polygon = [[round(float(x), 1), round(float(y), 1)] for x, y in roi.polygon]
        rows.append({
            "image_id": rendered.spec.image_id, "roi_id": i, "abnormality": roi.spec.kind,
            "pathology": roi.spec.pathology, "morphology": roi.spec.morphology,
            "x0": roi.bbox[0], "y0": roi.bbox[1], "x1": roi.bbox[2], "y1": roi.bbox[3],
            "mask_pixels": int(roi.mask.sum()), "polygon": json.dumps(polygon, separators=(",", ":")),
        })
    return rows


def write_csv(path: Path, columns: list[str], rows: list[dict], delimiter: str = ",") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, delimiter=delimiter, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def write_ground_truth(out_dir: Path, images: list[dict], rois: list[dict]) -> None:
    write_csv(out_dir / "ground_truth.csv", GROUND_TRUTH_COLUMNS, images)
    write_csv(out_dir / "ground_truth_rois.csv", ROI_COLUMNS, rois)
