"""Crafted data for the data-layer tests (engineer A): real DICOM files written with
pydicom, and small trees in the real CBIS-DDSM / INbreast / manifest layouts.

Import from test modules: `from data_fixtures import write_dicom, breast_phantom, ...`
(pytest puts tests/ on sys.path). Fixtures wrapping these are in tests/conftest.py.
"""

from __future__ import annotations

import plistlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

MG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.2"  # Digital Mammography X-Ray Image Storage - For Presentation


def write_dicom(
    path: str | Path,
    pixels: np.ndarray,
    *,
    modality: str | None = "MG",
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    window: tuple[Any, Any] | None = None,
    voi_function: str | None = None,
    rescale: tuple[float, float] | None = None,
    voi_lut: tuple[list[int], list[int]] | None = None,
    laterality: str | None = None,
    view: str | None = None,
    series_description: str | None = None,
    patient_id: str | None = None,
    transfer_syntax: str | None = None,
    with_pixels: bool = True,
) -> Path:
    """Write a single-frame DICOM. `pixels` uint16/int16 (H, W) or uint8 (H, W, 3) for RGB."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MG_SOP_CLASS
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = MG_SOP_CLASS
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    if modality is not None:
        ds.Modality = modality
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    if pixels.ndim == 3:  # colour
        ds.SamplesPerPixel = 3
        ds.PhotometricInterpretation = "RGB"
        ds.PlanarConfiguration = 0
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        data = pixels.astype(np.uint8).tobytes()
    else:
        signed = pixels.dtype.kind == "i"
        bits = bits_stored or 16
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = photometric
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits, bits - 1
        ds.PixelRepresentation = 1 if signed else 0
        data = pixels.astype("<i2" if signed else "<u2").tobytes()
    if with_pixels:
        ds.PixelData = data
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if voi_function:
        ds.VOILUTFunction = voi_function
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    if voi_lut is not None:
        descriptor, lut = voi_lut
        item = Dataset()
        item.LUTDescriptor = descriptor
        item.add_new("LUTData", "OW", np.asarray(lut, dtype="<u2").tobytes())
        ds.VOILUTSequence = DicomSequence([item])
    if laterality:
        ds.ImageLaterality = laterality
    if view:
        ds.ViewPosition = view
    if series_description:
        ds.SeriesDescription = series_description
    if patient_id:
        ds.PatientID = patient_id
    if transfer_syntax:
        ds.compress(transfer_syntax)
    ds.save_as(path, enforce_file_format=True)
    return path


def breast_phantom(height: int = 64, width: int = 48, chest_wall: str = "left", seed: int = 0) -> np.ndarray:
    """uint16 image: a bright half-ellipse against one side (the chest wall), dark background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    cy, ry, rx = height / 2, height * 0.42, width * 0.7
    x = xx if chest_wall == "left" else (width - 1 - xx)
    inside = ((yy - cy) / ry) ** 2 + (x / rx) ** 2 <= 1.0
    img = np.where(inside, 30000 + rng.integers(0, 8000, size=(height, width)), rng.integers(0, 300, (height, width)))
    return img.astype(np.uint16)


def disc_mask(height: int, width: int, cy: int, cx: int, r: int) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    return ((yy - cy) ** 2 + (xx - cx) ** 2) <= r * r


# ------------------------------------------------------------------ CBIS-DDSM layout

CBIS_MASS_HEADER = (
    "patient_id,breast_density,left or right breast,image view,abnormality id,abnormality type,mass shape,"
    "mass margins,assessment,pathology,subtlety,image file path,cropped image file path,ROI mask file path"
)
CBIS_CALC_HEADER = (
    "patient_id,breast density,left or right breast,image view,abnormality id,abnormality type,calc type,"
    "calc distribution,assessment,pathology,subtlety,image file path,cropped image file path,ROI mask file path"
)


def cbis_case(
    patient: str, side: str, view: str, kind: str = "mass", split: str = "Training",
    abnormality: int = 1, pathology: str = "MALIGNANT",
) -> dict[str, Any]:
    return dict(patient=patient, side=side, view=view, kind=kind, split=split, abn=abnormality, pathology=pathology)


def make_cbis_tree(
    root: str | Path,
    cases: Sequence[dict[str, Any]],
    *,
    layout: str = "nbia",
    shape: tuple[int, int] = (64, 48),
    swap_crop_mask_files: bool = False,
    same_series_folder: bool = False,
) -> Path:
    """CBIS-DDSM download in the NBIA-retriever (`nbia`) or classic UID (`classic`) layout,
    with the four CSVs as distributed (quoted paths with trailing newlines)."""
    root = Path(root)
    dicom_root = root / "CBIS-DDSM" if layout == "nbia" else root
    rows: dict[tuple[str, str], list[str]] = {}
    made_full: set[str] = set()
    for i, c in enumerate(cases):
        prefix = f"{'Mass' if c['kind'] == 'mass' else 'Calc'}-{c['split']}"
        full_name = f"{prefix}_{c['patient']}_{c['side']}_{c['view']}"
        roi_name = f"{full_name}_{c['abn']}"
        h, w = shape
        full = breast_phantom(h, w, chest_wall="left" if c["side"] == "LEFT" else "right", seed=i)
        mask = disc_mask(h, w, h // 2, w // 4 if c["side"] == "LEFT" else 3 * w // 4, max(2, h // 10))
        crop = full[h // 4: h // 2, w // 8: w // 3]
        study, series_full, series_roi = generate_uid(), generate_uid(), generate_uid()
        if layout == "nbia":
            full_path = dicom_root / full_name / "07-20-2016-DDSM-NA-74994" / "1.000000-full mammogram images-24515" / "1-1.dcm"
            if same_series_folder:
                mask_path = dicom_root / roi_name / "09-06-2017-DDSM-NA-81938" / "1.000000-ROI mask images-22894" / "1-1.dcm"
                crop_path = mask_path.with_name("1-2.dcm")
            else:
                mask_path = dicom_root / roi_name / "09-06-2017-DDSM-NA-81938" / "1.000000-ROI mask images-22894" / "1-1.dcm"
                crop_path = dicom_root / roi_name / "09-06-2017-DDSM-NA-81938" / "1.000000-cropped images-58924" / "1-1.dcm"
        else:
            full_path = dicom_root / full_name / study / series_full / "000000.dcm"
            mask_path = dicom_root / roi_name / study / series_roi / "000001.dcm"
            crop_path = dicom_root / roi_name / study / series_roi / "000000.dcm"
        if swap_crop_mask_files:
            mask_path, crop_path = crop_path, mask_path
        if full_name not in made_full:
            write_dicom(full_path, full, series_description="full mammogram images" if layout == "nbia" else None,
                        patient_id=full_name)
            made_full.add(full_name)
        desc_mask = "ROI mask images" if layout == "nbia" else None
        desc_crop = "cropped images" if layout == "nbia" else None
        write_dicom(mask_path, mask.astype(np.uint16) * 255, series_description=desc_mask, patient_id=roi_name,
                    bits_stored=8)
        write_dicom(crop_path, crop, series_description=desc_crop, patient_id=roi_name)
        csv_full = f"{full_name}/{study}/{series_full}/000000.dcm"
        csv_crop = f"{roi_name}/{study}/{series_roi}/000000.dcm"
        csv_mask = f"{roi_name}/{study}/{series_roi}/000001.dcm"
        kind_fields = "OVAL,CIRCUMSCRIBED" if c["kind"] == "mass" else "PLEOMORPHIC,CLUSTERED"
        line = (f'{c["patient"]},3,{c["side"]},{c["view"]},{c["abn"]},{"mass" if c["kind"] == "mass" else "calcification"},'
                f'{kind_fields},4,{c["pathology"]},3,{csv_full},"{csv_crop}\n","{csv_mask}\n"')
        rows.setdefault((c["kind"], c["split"]), []).append(line)
    for kind in ("mass", "calc"):
        for split in ("Training", "Test"):
            name = f"{kind}_case_description_{'train' if split == 'Training' else 'test'}_set.csv"
            header = CBIS_MASS_HEADER if kind == "mass" else CBIS_CALC_HEADER
            lines = rows.get((kind, split), [])
            (root / name).write_text(header + "\n" + "".join(line + "\n" for line in lines))
    return root


# ------------------------------------------------------------------ INbreast layout


def inbreast_name(file_id: str, patient_hash: str, side: str, view: str) -> str:
    return f"{file_id}_{patient_hash}_MG_{side}_{'ML' if view == 'MLO' else view}_ANON.dcm"


def make_inbreast_tree(
    root: str | Path,
    images: Sequence[dict[str, Any]],
    *,
    shape: tuple[int, int] = (64, 48),
) -> Path:
    """`INbreast Release 1.0/` with AllDICOMs/, AllXML/ and the semicolon CSV.

    Each image dict: id, hash, side (L|R), view (CC|MLO), birads ('1'..'6', '4a'...),
    optional rois: list of (name, [(x, y), ...]); optional in_csv / dicom flags.
    """
    base = Path(root) / "INbreast Release 1.0"
    (base / "AllDICOMs").mkdir(parents=True, exist_ok=True)
    (base / "AllXML").mkdir(parents=True, exist_ok=True)
    lines = ["Patient ID;Patient age;Laterality;View;Acquisition date;File Name;ACR;Bi-Rads"]
    for i, im in enumerate(images):
        if im.get("dicom", True):
            px = breast_phantom(*shape, chest_wall="left" if im["side"] == "L" else "right", seed=100 + i)
            write_dicom(base / "AllDICOMs" / inbreast_name(im["id"], im["hash"], im["side"], im["view"]), px,
                        laterality=im["side"], view=im["view"])
        if im.get("in_csv", True):
            lines.append(f"removed;removed;{im['side']};{im['view']};201001;{im['id']};{im.get('acr', '2')} ;{im['birads']}")
        if im.get("rois"):
            rois = []
            for name, points in im["rois"]:
                rois.append({"Name": name, "NumberOfPoints": len(points),
                             "Point_px": [f"({x:.2f}, {y:.2f})" for x, y in points]})
            plist = {"Images": [{"ImageIndex": 0, "NumberOfROIs": len(rois), "ROIs": rois}]}
            (base / "AllXML" / f"{im['id']}.xml").write_bytes(plistlib.dumps(plist, fmt=plistlib.FMT_XML))
    (base / "INbreast.csv").write_text("\n".join(lines) + "\n")
    return base


# ------------------------------------------------------------------ site manifest


def make_site(root: str | Path, rows: Sequence[dict[str, Any]], *, shape: tuple[int, int] = (64, 48),
              write_files: bool = True, extra_header: str = "") -> Path:
    """A hospital folder: DICOMs + manifest.csv (rows: image_path, patient_id, label, ...)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    columns = list(rows[0].keys()) if rows else ["image_path", "patient_id", "label"]
    out = [",".join(columns)]
    for i, r in enumerate(rows):
        if write_files and r.get("image_path") and not (root / r["image_path"]).exists():
            write_dicom(root / r["image_path"], breast_phantom(*shape, seed=200 + i))
        out.append(",".join(str(r.get(c, "")) for c in columns))
    (root / "manifest.csv").write_text(extra_header + "\n".join(out) + "\n")
    return root
