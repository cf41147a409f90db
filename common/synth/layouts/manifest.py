"""Hospital-site layout: `<site>/images/<patient>/<image>.dcm` + `<site>/manifest.csv`.

`manifest.csv` columns: image_path (relative to the site folder), patient_id, label (0/1),
laterality (L|R), view (CC|MLO), vendor. No ROI annotations: hospitals rarely have them.
"""

from __future__ import annotations

from pathlib import Path

from mammo_fl.common.synth.dicom_io import DicomMeta, make_uid, write_dicom
from mammo_fl.common.synth.layouts.records import ground_truth_row, roi_rows, write_csv
from mammo_fl.common.synth.render import RenderedImage

MANIFEST_COLUMNS = ["image_path", "patient_id", "label", "laterality", "view", "vendor"]


def write_image(rendered: RenderedImage, out_dir: Path, options: dict) -> dict:
    spec, acq = rendered.spec, rendered.acquired
    site_dir = out_dir / spec.site
    rel = Path("images") / spec.patient_id / f"{spec.image_id}.dcm"
    meta = DicomMeta(spec.patient_id, make_uid(spec.seed, spec.site, spec.patient_id, "study"),
                     make_uid(spec.seed, spec.image_id, "series"), make_uid(spec.seed, spec.image_id, "sop"),
                     spec.laterality, spec.view, "full mammogram images", rendered.pixel_spacing_mm, spec.profile,
                     photometric=acq.photometric, bits_stored=acq.bits_stored, window=acq.window)
    write_dicom(site_dir / rel, acq.pixels, meta)
    row = {"image_path": rel.as_posix(), "patient_id": spec.patient_id, "label": spec.label,
           "laterality": spec.laterality, "view": spec.view, "vendor": spec.profile.name, "site": spec.site}
    return {"ground_truth": ground_truth_row(rendered, f"{spec.site}/{rel.as_posix()}"), "rois": roi_rows(rendered),
            "layout": [row]}


def finalize(out_dir: Path, layout_rows: list[dict], options: dict) -> None:
    for site in options["site_names"]:
        rows = [{k: r[k] for k in MANIFEST_COLUMNS} for r in layout_rows if r["site"] == site]
        write_csv(out_dir / site / "manifest.csv", MANIFEST_COLUMNS, rows)
