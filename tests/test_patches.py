"""Patch sampling rules: overlap test, S1/S10, tissue, no lesion in background, blobs, split hygiene."""

from __future__ import annotations

import numpy as np
import pytest

from mammo_fl.common.utils.errors import ConfigError
from mammo_fl.common.imaging.breast import breast_mask
from mammo_fl.common.imaging.png16 import read_png16, write_png16
from mammo_fl.common.pipeline.patches import (
    PATCH_CLASSES,
    BoxSum,
    RoiInput,
    SamplingSettings,
    extract_patch,
    overlap_fractions,
    overlaps,
    patch_class,
    sample_background_centres,
    sample_image,
    sample_positive_centres,
)

H, W, P = 144, 112, 24


def breast_image(h: int = H, w: int = W) -> np.ndarray:
    """Half-ellipse 'breast' against the left edge, plus a bright label in a corner."""
    yy, xx = np.mgrid[0:h, 0:w]
    inside = ((yy - h / 2) / (0.45 * h)) ** 2 + (xx / (0.8 * w)) ** 2 <= 1.0
    img = np.where(inside, 20000 + 200 * ((yy + xx) % 7), 0).astype(np.uint16)
    img[2:6, w - 8 : w - 2] = 60000  # small label: not the largest component
    return img


def disc(cy: int, cx: int, r: int, h: int = H, w: int = W) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def test_overlap_is_either_or() -> None:
    small = BoxSum(disc(70, 40, 4))  # far smaller than the patch: roi fraction decides
    roi_frac, patch_frac = overlap_fractions(small, 70, 40, P)
    assert roi_frac == 1.0 and patch_frac < 0.2
    assert overlaps(small, 70, 40, P, 0.9)
    big = BoxSum(disc(70, 40, 40))  # bigger than the patch: patch fraction decides
    roi_frac, patch_frac = overlap_fractions(big, 70, 40, P)
    assert patch_frac == 1.0 and roi_frac < 0.2
    assert overlaps(big, 70, 40, P, 0.9)
    # half the small lesion inside the patch: neither fraction passes 0.9
    assert not overlaps(small, 70, 40 + P // 2, P, 0.9)
    assert not overlaps(small, 10, 10, P, 0.0)  # no intersection at all


def test_boxsum_matches_direct_count() -> None:
    rng = np.random.default_rng(0)
    mask = rng.random((50, 40)) > 0.7
    s = BoxSum(mask)
    for cy, cx in [(0, 0), (25, 20), (49, 39), (-3, 5), (10, 45)]:
        r0, c0 = cy - 5, cx - 5
        direct = mask[max(r0, 0) : max(r0 + 10, 0), max(c0, 0) : max(c0 + 10, 0)].sum()
        assert s.window(cy, cx, 10) == direct


def test_s10_positive_patches_meet_cutoff() -> None:
    mask = disc(70, 40, 5)
    rng = np.random.default_rng(1)
    settings = SamplingSettings(patch_size=P, scheme="S10")
    centres = sample_positive_centres(mask, 10, settings, rng)
    assert len(centres) == 10
    s = BoxSum(mask)
    for cy, cx, source in centres:
        assert source == "roi"
        assert overlaps(s, cy, cx, P, 0.9)
    assert len({(cy, cx) for cy, cx, _ in centres}) > 1  # random, not all the centroid


def test_positive_cutoff_relaxes_when_unreachable() -> None:
    # a thin 60x3 line: neither 90 % of it nor 90 % of a 24 px patch fits -> must relax, not hang
    mask = np.zeros((H, W), bool)
    mask[40:100, 50:53] = True
    settings = SamplingSettings(patch_size=P, scheme="S10", max_tries=20000)
    centres = sample_positive_centres(mask, 10, settings, np.random.default_rng(2))
    assert len(centres) == 10
    s = BoxSum(mask)
    assert not any(overlaps(s, cy, cx, P, 0.9) for cy, cx, _ in centres)
    assert all(overlap_fractions(s, cy, cx, P)[0] > 0.2 for cy, cx, _ in centres)


def test_s1_centres_on_centroid() -> None:
    mask = disc(60, 30, 6)
    settings = SamplingSettings(patch_size=P, scheme="S1")
    assert settings.per_roi == 1 and settings.background_per_image == 1
    assert sample_positive_centres(mask, 1, settings, np.random.default_rng(0)) == [(60, 30, "centroid")]


def test_background_has_tissue_and_avoids_every_lesion() -> None:
    img = breast_image()
    lesions = [disc(50, 30, 8), disc(95, 45, 12)]
    settings = SamplingSettings(patch_size=P, scheme="S10")
    breast = breast_mask(img)
    assert not breast[2:6, W - 8 : W - 2].any()  # the label is not breast
    centres = sample_background_centres(img, breast, lesions, 40, settings, np.random.default_rng(3))
    assert len(centres) == 40
    tissue = BoxSum(breast)
    sums = [BoxSum(m) for m in lesions]
    for cy, cx, _ in centres:
        assert tissue.window(cy, cx, P) / P**2 >= 0.75
        for s in sums:
            roi_frac, patch_frac = overlap_fractions(s, cy, cx, P)
            assert roi_frac <= 0.35 and patch_frac <= 0.35


def test_blob_hard_negatives_follow_background_rules() -> None:
    img = breast_image()
    for cy, cx in [(40, 20), (60, 50), (110, 30)]:  # bright specks = hard negatives
        img[disc(cy, cx, 2)] = 50000
    lesion = disc(95, 45, 10)
    settings = SamplingSettings(patch_size=P, scheme="S10", blob_negatives=5)
    centres = sample_background_centres(img, breast_mask(img), [lesion], 10, settings, np.random.default_rng(4))
    blobs = [(cy, cx) for cy, cx, src in centres if src == "blob"]
    assert 1 <= len(blobs) <= 5 and len(centres) == 10
    s = BoxSum(lesion)
    assert all(not overlaps(s, cy, cx, P, 0.35) for cy, cx, _ in centres)
    # blob centres land on the specks
    assert all(img[cy, cx] >= 40000 or img[max(cy - 2, 0) : cy + 3, max(cx - 2, 0) : cx + 3].max() >= 50000 for cy, cx in blobs)


def test_sample_image_counts_and_classes_are_seeded() -> None:
    img = breast_image()
    rois = [RoiInput("1", disc(50, 30, 6), "mass_malignant"), RoiInput("2", disc(100, 40, 3), "calc_benign")]
    settings = SamplingSettings(patch_size=P, scheme="S10")
    a = sample_image(img, rois, settings, np.random.default_rng(7))
    b = sample_image(img, rois, settings, np.random.default_rng(7))
    assert a.patches == b.patches and not a.problems
    classes = [p.class_name for p in a.patches]
    assert classes.count("mass_malignant") == 10 and classes.count("calc_benign") == 10
    assert classes.count("background") == 10
    bad = sample_image(img, [RoiInput("3", np.zeros((5, 5), bool), "mass_benign")], settings, np.random.default_rng(0))
    assert any("mask shape" in p for p in bad.problems)  # reported, not raised
    assert sum(p.class_name == "background" for p in bad.patches) == 10


def test_patch_class_and_settings_validation() -> None:
    assert patch_class("calcification", "BENIGN_WITHOUT_CALLBACK") == "calc_benign"
    assert patch_class("mass", "MALIGNANT") == "mass_malignant"
    assert set(PATCH_CLASSES) == {"background", "calc_benign", "calc_malignant", "mass_benign", "mass_malignant"}
    with pytest.raises(ValueError):
        patch_class("distortion", "BENIGN")
    with pytest.raises(ConfigError):
        SamplingSettings(patch_size=P, scheme="ten")
    with pytest.raises(ConfigError):
        SamplingSettings.from_config({"patch_size": P, "bogus": 1})


def test_extract_patch_pads_and_png16_roundtrip(tmp_path) -> None:
    img = breast_image()
    patch = extract_patch(img, 0, 0, P)  # centred on the corner: 3/4 zero padding
    assert patch.shape == (P, P) and patch.dtype == np.uint16
    assert (patch[: P // 2, :] == 0).all() and (patch[P // 2 :, P // 2 :] == img[: P // 2, : P // 2]).all()
    write_png16(tmp_path / "p.png", patch)
    assert np.array_equal(read_png16(tmp_path / "p.png"), patch)
