"""mammo_fl.common.imaging.dicom on crafted DICOM files: intensity convention, VOI LUTs, bad input."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap

import numpy as np
import pydicom
import pytest
from data_fixtures import write_dicom
from pydicom.encaps import encapsulate
from pydicom.pixels import apply_windowing
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

from mammo_fl.common.imaging.dicom import read_dicom, read_header, read_mask_dicom, window
from mammo_fl.common.utils.errors import ConfigError, DataError

H, W = 64, 48


def ramp(lo: int = 0, hi: int = 65535, dtype=np.uint16) -> np.ndarray:
    return np.linspace(lo, hi, H * W).reshape(H, W).round().astype(dtype)


def test_plain_16bit_is_scaled_by_bit_depth(tmp_path):
    raw = ramp()
    img = read_dicom(write_dicom(tmp_path / "a.dcm", raw), min_side=16)
    assert img.pixels.dtype == np.float32 and img.pixels.shape == (H, W)
    np.testing.assert_allclose(img.pixels, raw / 65535.0, atol=1e-6)
    assert img.voi == "none" and img.bits_stored == 16


def test_12bit_stored_uses_its_own_range(tmp_path):
    raw = ramp(0, 4095)
    img = read_dicom(write_dicom(tmp_path / "a.dcm", raw, bits_stored=12), min_side=16)
    np.testing.assert_allclose(img.pixels, raw / 4095.0, atol=1e-6)


def test_monochrome1_is_inverted(tmp_path):
    raw = ramp()
    img = read_dicom(write_dicom(tmp_path / "a.dcm", raw, photometric="MONOCHROME1"), min_side=16)
    np.testing.assert_allclose(img.pixels, 1.0 - raw / 65535.0, atol=1e-6)


def test_rescale_then_range_of_rescaled_values(tmp_path):
    raw = ramp(0, 4095)
    img = read_dicom(write_dicom(tmp_path / "a.dcm", raw, bits_stored=12, rescale=(2.0, -100.0)), min_side=16)
    lo, hi = -100.0, 4095 * 2.0 - 100.0
    np.testing.assert_allclose(img.pixels, (raw * 2.0 - 100.0 - lo) / (hi - lo), atol=1e-6)


@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
def test_voi_window_matches_pydicom(tmp_path, function):
    raw = ramp(0, 4095)
    path = write_dicom(tmp_path / "a.dcm", raw, bits_stored=12, window=(1800, 1200), voi_function=function)
    img = read_dicom(path, min_side=16)
    assert img.voi == function
    ds = pydicom.dcmread(path)
    expected = apply_windowing(raw.astype(np.float64), ds) / 4095.0  # pydicom: output range = bit depth
    np.testing.assert_allclose(img.pixels, expected, atol=1e-5)
    assert img.pixels.min() >= 0.0 and img.pixels.max() <= 1.0


def test_window_formulas_at_known_points():
    # LINEAR, c=100, w=21: below c-0.5-(w-1)/2 = 89.5 -> 0, above 109.5 -> 1, centre 99.5 -> 0.5
    np.testing.assert_allclose(window(np.array([80, 89.5, 99.5, 109.5, 120.0]), 100, 21, "LINEAR"),
                               [0, 0, 0.5, 1.0, 1.0])
    np.testing.assert_allclose(window(np.array([80, 90, 100, 110, 111.0]), 100, 20, "LINEAR_EXACT"),
                               [0, 0, 0.5, 1.0, 1.0])
    np.testing.assert_allclose(window(np.array([100.0]), 100, 20, "SIGMOID"), [0.5])
    np.testing.assert_allclose(window(np.array([110.0]), 100, 20, "SIGMOID"), [1 / (1 + np.exp(-2.0))])


def test_first_of_several_window_pairs_is_used(tmp_path):
    raw = ramp(0, 4095)
    many = write_dicom(tmp_path / "many.dcm", raw, bits_stored=12, window=([1000, 3000], [500, 800]))
    one = write_dicom(tmp_path / "one.dcm", raw, bits_stored=12, window=(1000, 500))
    np.testing.assert_array_equal(read_dicom(many, min_side=16).pixels, read_dicom(one, min_side=16).pixels)


def test_voi_lut_sequence_is_preferred_to_window(tmp_path):
    raw = (np.arange(H * W).reshape(H, W) % 256).astype(np.uint16)
    lut = [min(4095, v * 16) for v in range(256)]  # 256 entries, first input 0, 12-bit output
    path = write_dicom(tmp_path / "a.dcm", raw, bits_stored=8, voi_lut=([256, 0, 12], lut), window=(10, 5))
    img = read_dicom(path, min_side=16)
    assert img.voi == "lut-sequence"
    np.testing.assert_allclose(img.pixels, np.array(lut)[raw] / 4095.0, atol=1e-6)


def test_voi_then_monochrome1(tmp_path):
    raw = ramp(0, 4095)
    path = write_dicom(tmp_path / "a.dcm", raw, bits_stored=12, window=(2048, 4096), photometric="MONOCHROME1")
    plain = write_dicom(tmp_path / "b.dcm", raw, bits_stored=12, window=(2048, 4096))
    np.testing.assert_allclose(read_dicom(path, min_side=16).pixels, 1.0 - read_dicom(plain, min_side=16).pixels,
                               atol=1e-6)


def test_apply_voi_false_ignores_window(tmp_path):
    raw = ramp()
    path = write_dicom(tmp_path / "a.dcm", raw, window=(100, 50))
    np.testing.assert_allclose(read_dicom(path, min_side=16, apply_voi=False).pixels, raw / 65535.0, atol=1e-6)


def test_header_fields(tmp_path):
    path = write_dicom(tmp_path / "a.dcm", ramp(), laterality="L", view="ML", series_description="full mammogram images",
                       patient_id="P_1")
    h = read_header(path)
    assert (h.laterality, h.view, h.series_description, h.patient_id, h.shape) == ("L", "MLO", "full mammogram images",
                                                                                    "P_1", (H, W))


@pytest.mark.parametrize("ts", [JPEG2000Lossless, RLELossless])
def test_compressed_transfer_syntaxes_decode(tmp_path, ts):
    raw = ramp(0, 4095)
    img = read_dicom(write_dicom(tmp_path / "a.dcm", raw, bits_stored=12, transfer_syntax=ts), min_side=16)
    np.testing.assert_allclose(img.pixels, raw / 4095.0, atol=1e-6)


# ----------------------------------------------------------------------------- bad input


def expect_error(path, *words, **kwargs):
    with pytest.raises(DataError) as info:
        read_dicom(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    for word in words:
        assert word in message, message
    return message


def test_truncated_pixel_data(tmp_path):
    path = write_dicom(tmp_path / "a.dcm", ramp())
    data = path.read_bytes()
    path.write_bytes(data[:-1000])
    expect_error(path, "truncated", min_side=16)


def test_truncated_header(tmp_path):
    path = write_dicom(tmp_path / "a.dcm", ramp())
    path.write_bytes(path.read_bytes()[:300])
    expect_error(path, "truncated", min_side=16)


def test_not_dicom(tmp_path):
    path = tmp_path / "a.dcm"
    path.write_bytes(b"\x89PNG not a dicom" * 50)
    expect_error(path, "not a DICOM file")


def test_missing_file(tmp_path):
    expect_error(tmp_path / "nope.dcm", "not found")


def test_no_pixel_data(tmp_path):
    expect_error(write_dicom(tmp_path / "a.dcm", ramp(), with_pixels=False), "no pixel data", min_side=16)


def test_ct_modality_rejected(tmp_path):
    expect_error(write_dicom(tmp_path / "a.dcm", ramp(), modality="CT"), "modality CT", "MG", min_side=16)


def test_missing_modality_warns_but_reads(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="mammo_fl.common.imaging.dicom"):
        img = read_dicom(write_dicom(tmp_path / "a.dcm", ramp(), modality=None), min_side=16)
    assert img.pixels.shape == (H, W)
    assert any("no Modality" in r.message for r in caplog.records)


def test_small_image_rejected_by_default_min_side(tmp_path, monkeypatch):
    path = write_dicom(tmp_path / "a.dcm", ramp())
    monkeypatch.delenv("MAMMO_FL_MIN_SIDE", raising=False)
    expect_error(path, "64x48", "200 px")
    monkeypatch.setenv("MAMMO_FL_MIN_SIDE", "40")  # the run-wide override
    assert read_dicom(path).pixels.shape == (H, W)
    monkeypatch.setenv("MAMMO_FL_MIN_SIDE", "abc")
    with pytest.raises(ConfigError):
        read_dicom(path)


def test_rgb_rejected(tmp_path):
    rgb = np.zeros((H, W, 3), dtype=np.uint8)
    expect_error(write_dicom(tmp_path / "a.dcm", rgb), "colour", "RGB", min_side=16)


def _jpegls_with_garbage(tmp_path):
    path = write_dicom(tmp_path / "ls.dcm", ramp())
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = JPEGLSLossless
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xf7 not a real JPEG-LS stream \xff\xd9"])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_corrupt_compressed_stream(tmp_path):
    expect_error(_jpegls_with_garbage(tmp_path), "cannot decode pixel data", min_side=16)


def test_compressed_without_decoder_names_the_extra(tmp_path):
    """A real interpreter in which the JPEG plugins cannot be imported (as without the extra)."""
    path = _jpegls_with_garbage(tmp_path)
    script = textwrap.dedent(f"""
        import sys
        for name in ("pylibjpeg", "libjpeg", "openjpeg", "gdcm", "jpeg_ls"):
            sys.modules[name] = None  # import fails, as when the package is not installed
        from mammo_fl.common.imaging.dicom import read_dicom
        from mammo_fl.common.utils.errors import ConfigError, DataError
        try:
            read_dicom({str(path)!r}, min_side=16)
        except DataError as exc:
            print(exc)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert "mammo-fl[jpeg]" in out.stdout, out.stdout + out.stderr
    assert "JPEG-LS" in out.stdout and str(path) in out.stdout


def test_mask_dicom(tmp_path):
    mask = np.zeros((H, W), dtype=np.uint16)
    mask[10:20, 5:15] = 255
    out = read_mask_dicom(write_dicom(tmp_path / "m.dcm", mask, bits_stored=8))
    assert out.dtype == bool and out.sum() == 100
