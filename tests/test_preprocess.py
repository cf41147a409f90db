"""mammo_fl.common.imaging.cache: geometry, masks following images, the PNG cache."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
from data_fixtures import breast_phantom, disc_mask, write_dicom
from PIL import Image

from mammo_fl.common.utils.errors import ConfigError, DataError
from mammo_fl.common.imaging.cache import ImageCache, mean_grey
from mammo_fl.common.imaging.geometry import PreprocessSettings, parse_size, preprocess_array, to_model_input

H, W = 96, 72


def test_settings_key_is_stable_and_distinct():
    a = PreprocessSettings(1152, 896, "paper")
    assert a.key() == PreprocessSettings(1152, 896, "paper").key()
    assert len({a.key(), PreprocessSettings(1152, 896, "crop").key(), PreprocessSettings(288, 224, "paper").key()}) == 3
    assert PreprocessSettings.from_dict(a.to_dict()) == a


def test_settings_validation():
    with pytest.raises(ConfigError, match="mode"):
        PreprocessSettings(64, 64, "fancy")
    with pytest.raises(ConfigError):
        parse_size("1152-896")
    assert parse_size("1152x896") == (1152, 896)


def test_paper_mode_is_anisotropic_resize_without_flip():
    px = np.zeros((H, W), dtype=np.float32)
    px[:, : W // 2] = 1.0  # left half bright
    out, g = preprocess_array(px, PreprocessSettings(48, 48, "paper"))
    assert out.shape == (48, 48) and out.dtype == np.uint16
    assert not g.flip and g.crop == (0, H, 0, W)
    assert out[:, :20].min() > 60000 and out[:, 28:].max() < 5000  # no flip, aspect ignored


def test_constant_image_stays_constant():
    out, _ = preprocess_array(np.full((H, W), 0.5, np.float32), PreprocessSettings(40, 30, "paper"))
    assert np.abs(out.astype(int) - 32768).max() <= 1


@pytest.mark.parametrize("chest_wall", ["left", "right"])
def test_crop_mode_puts_chest_wall_left_and_crops_background(chest_wall):
    canvas = np.zeros((H * 2, W * 2), dtype=np.float32)
    canvas[40: 40 + H, 30: 30 + W] = breast_phantom(H, W, chest_wall=chest_wall) / 65535.0
    out, g = preprocess_array(canvas, PreprocessSettings(64, 48, "crop", crop_margin=0.0))
    assert g.flip == (chest_wall == "right")
    y0, y1, x0, x1 = g.crop
    assert y0 >= 30 and y1 <= 40 + H + 10 and x0 >= 20 and x1 <= 30 + W + 10  # dark border removed
    left, right = out[:, :24].astype(float).mean(), out[:, 24:].astype(float).mean()
    assert left > right  # chest wall (widest part) now on the left


@pytest.mark.parametrize("mode", ["paper", "crop"])
def test_mask_follows_image_geometry(tmp_path, mode):
    """A bright marker drawn where the mask is must land under the cached mask."""
    px = breast_phantom(H, W, chest_wall="right", seed=3)
    roi = disc_mask(H, W, 30, 50, 7)
    px[roi] = 65535
    img = write_dicom(tmp_path / "img.dcm", px)
    mask_dcm = write_dicom(tmp_path / "mask.dcm", roi.astype(np.uint16) * 255, bits_stored=8)
    cache = ImageCache(tmp_path / "cache", PreprocessSettings(64, 48, mode), min_side=16)
    image = cache.load(img)
    mask = cache.load_mask(mask_dcm, img)
    assert mask.shape == image.shape == (64, 48) and mask.dtype == bool and mask.any()
    assert image[mask].mean() > 60000  # the marker is exactly where the mask is
    assert image[~mask].mean() < 50000
    # a PNG mask (as INbreast rasterises) gives the same result
    png = tmp_path / "mask.png"
    Image.fromarray(roi.astype(np.uint8) * 255).save(png)
    np.testing.assert_array_equal(cache.load_mask(png, img), mask)


def test_mask_with_other_shape_is_a_clear_error(tmp_path):
    img = write_dicom(tmp_path / "img.dcm", breast_phantom(H, W))
    bad = write_dicom(tmp_path / "mask.dcm", np.zeros((H // 2, W), np.uint16), bits_stored=8)
    cache = ImageCache(tmp_path / "cache", PreprocessSettings(32, 24, "paper"), min_side=16)
    with pytest.raises(DataError, match="differs from image"):
        cache.load_mask(bad, img)
    report = cache.build_masks([(bad, img)], workers=1, progress=False)
    assert report.done == 0 and "differs" in report.skipped[0][1]


def test_cache_is_idempotent_atomic_and_keyed_by_source(tmp_path):
    src = write_dicom(tmp_path / "a.dcm", breast_phantom(H, W))
    cache = ImageCache(tmp_path / "cache", PreprocessSettings(32, 24, "paper"), min_side=16)
    first = cache.build([src], workers=1, progress=False)
    assert (first.done, first.computed, first.skipped) == (1, 1, [])
    png = cache.image_file(src)
    stamp = png.stat().st_mtime_ns
    again = cache.build([src], workers=1, progress=False)
    assert (again.done, again.computed) == (1, 0) and png.stat().st_mtime_ns == stamp
    assert png.parent.parent.parent == cache.directory and cache.directory.name == cache.settings.key()
    assert not [p for p in cache.directory.rglob("*") if ".tmp" in p.name]
    # a changed source is a new entry, never the stale one
    write_dicom(src, np.full((H, W), 65535, np.uint16))
    os.utime(src, ns=(stamp + 10**9, stamp + 10**9))
    assert cache.image_file(src) != png
    assert cache.load(src).min() == 65535
    # other settings use another folder
    other = ImageCache(tmp_path / "cache", PreprocessSettings(32, 24, "crop"), min_side=16)
    assert other.image_file(src).parent.parent.parent != cache.directory


def test_batch_skips_and_reports_bad_files(tmp_path):
    good = write_dicom(tmp_path / "good.dcm", breast_phantom(H, W))
    ct = write_dicom(tmp_path / "ct.dcm", breast_phantom(H, W), modality="CT")
    junk = tmp_path / "junk.dcm"
    junk.write_text("nope")
    cache = ImageCache(tmp_path / "cache", PreprocessSettings(32, 24, "paper"), min_side=16)
    report = cache.build([good, ct, junk, tmp_path / "missing.dcm"], workers=1, progress=False)
    reasons = dict(report.skipped)
    assert report.done == 1 and len(reasons) == 3
    assert "modality CT" in reasons[str(ct)] and "not a DICOM" in reasons[str(junk)]
    assert "not found" in reasons[str(tmp_path / "missing.dcm")]
    with pytest.raises(DataError, match="modality CT"):
        cache.load(ct)


def test_parallel_build_equals_serial(tmp_path):
    paths = [write_dicom(tmp_path / f"{i}.dcm", breast_phantom(H, W, seed=i)) for i in range(3)]
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"x" * 10)
    serial = ImageCache(tmp_path / "c1", PreprocessSettings(32, 24, "crop"), min_side=16)
    parallel = ImageCache(tmp_path / "c2", PreprocessSettings(32, 24, "crop"), min_side=16)
    assert pickle.loads(pickle.dumps(parallel)).directory == parallel.directory
    serial.build(paths, workers=1, progress=False)
    report = parallel.build([*paths, bad], workers=2, progress=False)
    assert report.done == 3 and report.computed == 3 and [p for p, _ in report.skipped] == [str(bad)]
    for p in paths:
        np.testing.assert_array_equal(serial.load(p), parallel.load(p))


def test_to_model_input_and_mean(tmp_path):
    img = np.array([[0, 65535], [32768, 13107]], dtype=np.uint16)
    x = to_model_input(img, mean=52.18)
    assert x.shape == (3, 2, 2) and x.dtype == np.float32
    np.testing.assert_allclose(x[0], img / 65535.0 * 255.0 - 52.18, rtol=1e-6, atol=1e-4)
    np.testing.assert_array_equal(x[0], x[2])
    src = write_dicom(tmp_path / "a.dcm", np.full((H, W), 65535 // 5, np.uint16))
    cache = ImageCache(tmp_path / "cache", PreprocessSettings(16, 16, "paper"), min_side=16)
    assert mean_grey(cache, [src, tmp_path / "missing.dcm"]) == pytest.approx(51.0, abs=0.01)
