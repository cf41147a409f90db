"""Write synthetic images and ROI masks as valid, uncompressed mammography DICOM files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    DigitalMammographyXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    PYDICOM_IMPLEMENTATION_UID,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from mammo_fl.common.utils.errors import DataError
from mammo_fl.common.synth.profiles import VendorProfile


def make_uid(*parts: object) -> str:
    """Deterministic UID from its parts (same seed -> same UIDs)."""
    return str(generate_uid(entropy_srcs=[str(p) for p in parts]))


@dataclass(frozen=True)
class DicomMeta:
    patient_id: str
    study_uid: str
    series_uid: str
    sop_uid: str
    laterality: str  # L | R
    view: str  # CC | MLO
    series_description: str  # "full mammogram images" | "ROI mask images" | "cropped images"
    pixel_spacing_mm: float
    profile: VendorProfile
    study_date: str = "20160720"
    series_number: int = 1
    instance_number: int = 1
    photometric: str = "MONOCHROME2"
    bits_stored: int = 16
    window: tuple[float, float] | None = None


def write_dicom(path: Path, pixels: np.ndarray, meta: DicomMeta) -> None:
    """Write `pixels` (uint8 or uint16, H x W) with mammography headers."""
    film = meta.profile.domain == "film"
    sop_class = SecondaryCaptureImageStorage if film else DigitalMammographyXRayImageStorageForPresentation
    file_meta = FileMetaDataset()
    file_meta.MediaStorageSOPClassUID = sop_class
    file_meta.MediaStorageSOPInstanceUID = meta.sop_uid
    file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = file_meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.sop_uid
    ds.StudyInstanceUID = meta.study_uid
    ds.SeriesInstanceUID = meta.series_uid
    ds.Modality = "MG"
    ds.PatientID = meta.patient_id
    ds.PatientName = meta.patient_id
    ds.StudyDate = ds.SeriesDate = meta.study_date
    ds.StudyID = "DDSM" if film else "1"
    ds.SeriesNumber = meta.series_number
    ds.InstanceNumber = meta.instance_number
    ds.SeriesDescription = meta.series_description
    ds.BodyPartExamined = "BREAST"
    ds.ImageLaterality = meta.laterality
    ds.Laterality = meta.laterality
    ds.ViewPosition = meta.view
    ds.PixelSpacing = [f"{meta.pixel_spacing_mm:.6f}", f"{meta.pixel_spacing_mm:.6f}"]
    ds.Manufacturer = meta.profile.manufacturer
    ds.ManufacturerModelName = meta.profile.model
    if film:
        ds.ConversionType = "DF"  # digitised film
    else:
        ds.ConversionType = "DV"
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
    if meta.window is not None:
        ds.WindowCenter = f"{meta.window[0]:.1f}"
        ds.WindowWidth = f"{meta.window[1]:.1f}"
        ds.VOILUTFunction = "LINEAR"
        ds.RescaleIntercept = "0"
        ds.RescaleSlope = "1"
        ds.RescaleType = "US"
    arr = np.ascontiguousarray(pixels)
    ds.set_pixel_data(arr, meta.photometric, meta.bits_stored, generate_instance_uid=False)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
    except OSError as exc:
        raise DataError(path, f"cannot write DICOM: {exc.strerror or exc}") from None
