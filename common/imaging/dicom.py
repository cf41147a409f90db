"""Read a mammogram DICOM into a float32 array with one intensity convention.

Convention (docs/architecture.md): pixels are float32 in ``[0, 1]`` with dense tissue
bright. Order of operations (DICOM PS3.3 C.11):

1. modality LUT (RescaleSlope / RescaleIntercept, or a Modality LUT Sequence);
2. VOI LUT: a VOI LUT Sequence if present, else the first WindowCenter / WindowWidth
   pair with VOILUTFunction LINEAR (default), LINEAR_EXACT or SIGMOID, output ``[0, 1]``;
   without any VOI the value range implied by the bit depth (after the modality LUT)
   is mapped to ``[0, 1]``, so a 16-bit CBIS-DDSM file gives ``stored / 65535``;
3. MONOCHROME1 is inverted (``y -> 1 - y``).

Every problem with a file raises ``DataError(path, cause)`` with a one-line cause.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from mammo_fl.common.utils.errors import ConfigError, DataError

log = logging.getLogger(__name__)

# Smallest side (pixels) accepted for a mammogram; a sanity check against thumbnails,
# scout images and secondary captures (real mammograms are >= ~1000 px; the CPU presets'
# synthetic images are 288x224). Tests with small crafted images pass `min_side=`;
# the environment variable MAMMO_FL_MIN_SIDE overrides the default for a whole run.
MIN_SIDE = 200
MIN_SIDE_ENV = "MAMMO_FL_MIN_SIDE"

JPEG_EXTRA = "mammo-fl[jpeg]"
GREY_PHOTOMETRIC = ("MONOCHROME1", "MONOCHROME2")
_VIEW_ALIASES = {"CC": "CC", "MLO": "MLO", "ML": "MLO"}
_HEADER_TAGS = [
    "Modality", "Rows", "Columns", "SeriesDescription", "PatientID", "ImageLaterality",
    "Laterality", "ViewPosition", "Manufacturer", "ManufacturerModelName", "PhotometricInterpretation",
    "SamplesPerPixel", "NumberOfFrames", "BitsStored", "PresentationIntentType",
]


@dataclass(frozen=True)
class DicomHeader:
    """Header facts used by the adapters and checks (no pixel decoding)."""

    path: Path
    modality: str | None
    rows: int | None
    columns: int | None
    series_description: str
    patient_id: str
    laterality: str | None  # "L" | "R" | None
    view: str | None  # "CC" | "MLO" | other upper-case value | None
    manufacturer: str
    photometric: str
    transfer_syntax: str

    @property
    def shape(self) -> tuple[int, int] | None:
        return (self.rows, self.columns) if self.rows and self.columns else None


@dataclass(frozen=True)
class DicomImage:
    """Pixels in the module's intensity convention plus the header facts."""

    pixels: np.ndarray  # float32 (H, W) in [0, 1], dense tissue bright
    header: DicomHeader
    bits_stored: int
    voi: str  # "lut-sequence" | "LINEAR" | "LINEAR_EXACT" | "SIGMOID" | "none"

    @property
    def path(self) -> Path:
        return self.header.path

    @property
    def laterality(self) -> str | None:
        return self.header.laterality


def default_min_side() -> int:
    """MIN_SIDE, or the MAMMO_FL_MIN_SIDE environment variable when set."""
    raw = os.environ.get(MIN_SIDE_ENV, "").strip()
    if not raw:
        return MIN_SIDE
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{MIN_SIDE_ENV}={raw!r} is not an integer") from None
    if value < 1:
        raise ConfigError(f"{MIN_SIDE_ENV}={raw!r} must be >= 1")
    return value


def _dcmread(path: Path, **kwargs: object) -> Dataset:
    if not path.is_file():
        raise DataError(path, "file not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns on odd values; our checks decide
            return pydicom.dcmread(path, **kwargs)
    except InvalidDicomError:
        raise DataError(path, "not a DICOM file (no 'DICM' prefix / file meta header)") from None
    except (EOFError, OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise DataError(path, f"unreadable DICOM (truncated or corrupt): {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _normalise_laterality(value: object) -> str | None:
    text = str(value or "").strip().upper()
    if text in ("L", "LEFT"):
        return "L"
    if text in ("R", "RIGHT"):
        return "R"
    return None


def normalise_view(value: object) -> str | None:
    """`CC`, `MLO`; `ML` (INbreast file names) means MLO; other views upper-cased; empty -> None."""
    text = str(value or "").strip().upper()
    if not text:
        return None
    return _VIEW_ALIASES.get(text, text)


def _header_from_dataset(path: Path, ds: Dataset) -> DicomHeader:
    meta = getattr(ds, "file_meta", None)
    ts = str(getattr(meta, "TransferSyntaxUID", "") or "")
    rows = ds.get("Rows")
    cols = ds.get("Columns")
    return DicomHeader(
        path=path,
        modality=(str(ds.get("Modality")).strip().upper() or None) if ds.get("Modality") else None,
        rows=int(rows) if rows is not None else None,
        columns=int(cols) if cols is not None else None,
        series_description=str(ds.get("SeriesDescription", "") or "").strip(),
        patient_id=str(ds.get("PatientID", "") or "").strip(),
        laterality=_normalise_laterality(ds.get("ImageLaterality")) or _normalise_laterality(ds.get("Laterality")),
        view=normalise_view(ds.get("ViewPosition")),
        manufacturer=str(ds.get("Manufacturer", "") or "").strip(),
        photometric=str(ds.get("PhotometricInterpretation", "") or "").strip().upper(),
        transfer_syntax=ts,
    )


def read_header(path: str | Path) -> DicomHeader:
    """Header only (fast: pixel data is not read). Raises DataError for non-DICOM files."""
    path = Path(path)
    ds = _dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
    return _header_from_dataset(path, ds)


def _check_image(path: Path, ds: Dataset, header: DicomHeader, min_side: int, require_mg: bool) -> None:
    """Reject what is not a single-frame grey-scale mammogram, with the reason."""
    if "PixelData" not in ds:
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            raise DataError(path, "float pixel data is not supported for mammograms")
        raise DataError(path, "no pixel data (file truncated, or not an image object)")
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if samples != 1 or (header.photometric and header.photometric not in GREY_PHOTOMETRIC):
        raise DataError(
            path,
            f"colour image ({header.photometric or '?'}, {samples} samples per pixel); "
            "a grey-scale mammogram (MONOCHROME1/2) is expected",
        )
    if require_mg:
        if header.modality is None:
            log.warning("%s: no Modality tag; assuming mammography (MG)", path)
        elif header.modality != "MG":
            raise DataError(path, f"modality {header.modality} is not mammography (MG)")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise DataError(path, f"multi-frame image ({frames} frames, e.g. tomosynthesis); a 2-D mammogram is expected")
    if not header.shape:
        raise DataError(path, "no Rows/Columns (file truncated?)")
    if min(header.shape) < min_side:
        raise DataError(
            path,
            f"image {header.rows}x{header.columns} is smaller than {min_side} px on a side; "
            "not a full mammogram (lower min_side for small test images)",
        )


def _check_decoder(path: Path, header: DicomHeader) -> None:
    """Compressed pixel data needs a plugin: name the extra that provides it."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import UID

    if not header.transfer_syntax:
        raise DataError(path, "no Transfer Syntax UID in the file meta (truncated header?)")
    ts = UID(header.transfer_syntax)
    if not ts.is_compressed:
        return
    try:
        decoder = get_decoder(ts)
    except NotImplementedError:
        raise DataError(path, f"unsupported transfer syntax {ts.name} ({ts}): no DICOM decoder exists for it") from None
    if not decoder.is_available:
        raise DataError(
            path,
            f"compressed transfer syntax {ts.name} ({ts}) cannot be decoded: no decoder installed; "
            f"install the extra {JPEG_EXTRA} (pip install '{JPEG_EXTRA}')",
        )


def _decode(path: Path, ds: Dataset) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ds.pixel_array
    except ValueError as exc:
        msg = _first_line(exc)
        if "less than expected" in msg or "doesn't match the expected length" in msg:
            raise DataError(path, f"truncated pixel data: {msg.split(' - ')[0]}") from None
        raise DataError(path, f"cannot decode pixel data: {msg}") from None
    except Exception as exc:  # decoders raise assorted types on corrupt streams
        raise DataError(path, f"cannot decode pixel data ({type(exc).__name__}): {_first_line(exc)}") from None


def _stored_range(ds: Dataset) -> tuple[float, float]:
    """Value range implied by BitsStored and PixelRepresentation."""
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)) or 16)
    if int(ds.get("PixelRepresentation", 0) or 0) == 1:
        return -(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1
    return 0.0, 2.0**bits - 1


def _modality_range(ds: Dataset) -> tuple[float, float]:
    """Range of the modality LUT output, used when there is no VOI transform."""
    if "ModalityLUTSequence" in ds:
        descriptor = ds.ModalityLUTSequence[0].LUTDescriptor
        return 0.0, 2.0 ** int(descriptor[2]) - 1
    lo, hi = _stored_range(ds)
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    a, b = lo * slope + intercept, hi * slope + intercept
    return min(a, b), max(a, b)


def _first_value(value: object) -> float:
    """WindowCenter / WindowWidth can be multi-valued: the first pair is used."""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = list(value)[0]  # type: ignore[arg-type]
    return float(value)  # type: ignore[arg-type]


def window(x: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """DICOM VOI window to the output range [0, 1] (PS3.3 C.11.2.1.2)."""
    x = np.asarray(x)
    if x.dtype.kind != "f":
        x = x.astype(np.float64)
    function = (function or "LINEAR").strip().upper()
    if function == "SIGMOID":
        if width <= 0:
            raise ValueError("SIGMOID window width must be > 0")
        return 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    if function == "LINEAR_EXACT":
        if width <= 0:
            raise ValueError("LINEAR_EXACT window width must be > 0")
        y = (x - center) / width + 0.5
        y = np.where(x <= center - width / 2, 0.0, y)
        return np.where(x > center + width / 2, 1.0, y)
    if function == "LINEAR":
        if width < 1:
            raise ValueError("LINEAR window width must be >= 1")
        if width == 1:  # degenerate: a threshold at center - 0.5
            return np.where(x <= center - 0.5, 0.0, 1.0)
        y = (x - (center - 0.5)) / (width - 1) + 0.5
        y = np.where(x <= center - 0.5 - (width - 1) / 2, 0.0, y)
        return np.where(x > center - 0.5 + (width - 1) / 2, 1.0, y)
    raise ValueError(f"unknown VOILUTFunction {function!r}")


def _apply_voi(path: Path, ds: Dataset, values: np.ndarray) -> tuple[np.ndarray, str]:
    """VOI transform to [0, 1]; returns (pixels, which VOI was used)."""
    from pydicom.pixels import apply_voi

    if "VOILUTSequence" in ds and len(ds.VOILUTSequence):
        item = ds.VOILUTSequence[0]
        try:
            # LUT inputs are integers (float input makes pydicom warn and index oddly)
            out = apply_voi(np.round(values).astype(np.int64), ds, index=0).astype(np.float32)
            top = 2.0 ** int(item.LUTDescriptor[2]) - 1
        except Exception as exc:
            raise DataError(path, f"invalid VOI LUT Sequence: {_first_line(exc)}") from None
        return _scale_into_unit(out, 0.0, top), "lut-sequence"
    if "WindowCenter" in ds and "WindowWidth" in ds:
        function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
        try:
            center, width = _first_value(ds.WindowCenter), _first_value(ds.WindowWidth)
            return window(values, center, width, function), function
        except (ValueError, TypeError, IndexError) as exc:
            raise DataError(path, f"invalid VOI window: {_first_line(exc)}") from None
    return _scale_by_bit_depth(path, ds, values), "none"


def _scale_into_unit(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """(values - lo) / (hi - lo) clipped to [0, 1], in place (float32 full-field images)."""
    values -= np.float32(lo)
    values *= np.float32(1.0 / (hi - lo))
    return np.clip(values, 0.0, 1.0, out=values)


def _scale_by_bit_depth(path: Path, ds: Dataset, values: np.ndarray) -> np.ndarray:
    lo, hi = _modality_range(ds)
    if not math.isfinite(hi - lo) or hi <= lo:
        raise DataError(path, "cannot determine the pixel value range (BitsStored / rescale)")
    return _scale_into_unit(values, lo, hi)


def _modality_lut(ds: Dataset, raw: np.ndarray) -> np.ndarray:
    """Stored values -> modality values as float32 (exact for <= 24-bit integers)."""
    if "ModalityLUTSequence" in ds:
        from pydicom.pixels import apply_modality_lut

        return np.asarray(apply_modality_lut(raw, ds), dtype=np.float32)
    values = raw.astype(np.float32)
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    if slope != 1.0:
        values *= np.float32(slope)
    if intercept != 0.0:
        values += np.float32(intercept)
    return values


def read_dicom(
    path: str | Path,
    *,
    min_side: int | None = None,
    require_mg: bool = True,
    apply_voi: bool = True,
) -> DicomImage:
    """Read one mammogram: checks, decode, modality LUT, VOI LUT, MONOCHROME1 inversion.

    `min_side` defaults to `default_min_side()` (MIN_SIDE or $MAMMO_FL_MIN_SIDE, read at call time).
    `apply_voi=False` skips VOI windows (pixels scaled by the bit-depth range instead).
    """
    path = Path(path)
    min_side = default_min_side() if min_side is None else int(min_side)
    ds = _dcmread(path)
    header = _header_from_dataset(path, ds)
    _check_image(path, ds, header, min_side, require_mg)
    _check_decoder(path, header)
    raw = _decode(path, ds)
    if raw.ndim != 2:
        raise DataError(path, f"expected a 2-D grey-scale image, decoded shape is {raw.shape}")
    try:
        values = _modality_lut(ds, raw)
    except Exception as exc:
        raise DataError(path, f"invalid modality LUT / rescale: {_first_line(exc)}") from None
    del raw
    if apply_voi:
        pixels, voi = _apply_voi(path, ds, values)
    else:
        pixels, voi = _scale_by_bit_depth(path, ds, values), "none"
    pixels = pixels.astype(np.float32, copy=False)
    if header.photometric == "MONOCHROME1":
        np.subtract(np.float32(1.0), pixels, out=pixels)
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)) or 16)
    return DicomImage(pixels=pixels, header=header, bits_stored=bits, voi=voi)


def read_mask_dicom(path: str | Path) -> np.ndarray:
    """A binary ROI mask stored as DICOM (CBIS-DDSM): nonzero stored value = ROI. No size/modality checks."""
    path = Path(path)
    ds = _dcmread(path)
    header = _header_from_dataset(path, ds)
    _check_image(path, ds, header, min_side=1, require_mg=False)
    _check_decoder(path, header)
    raw = _decode(path, ds)
    if raw.ndim != 2:
        raise DataError(path, f"expected a 2-D mask, decoded shape is {raw.shape}")
    return raw > 0
