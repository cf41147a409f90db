"""The synthetic layouts are read by the real adapters (common.adapters) with the expected counts."""

from __future__ import annotations

import numpy as np
import pandas as pd

from mammo_fl.common.imaging.adapters import build_index
from mammo_fl.common.imaging.dicom import read_dicom, read_mask_dicom


def _truth(root):
    images = pd.read_csv(root / "ground_truth.csv", dtype={"image_id": str, "birads": str}, keep_default_na=False)
    rois = pd.read_csv(root / "ground_truth_rois.csv", dtype={"image_id": str})
    return images, rois


def test_cbis_adapter_reads_every_image_and_mask(synth_cbis, tmp_path):
    truth, truth_rois = _truth(synth_cbis)
    index = build_index("cbis-ddsm", synth_cbis, tmp_path / "index")
    assert index.skipped == []
    images = index.images
    assert len(images) == len(truth) and images["patient_id"].nunique() == truth["patient_id"].nunique()
    key = ["patient_id", "laterality", "view"]
    merged = images.merge(truth, on=key, suffixes=("", "_truth"))
    assert len(merged) == len(truth)
    assert (merged["label"] == merged["label_truth"]).all() and merged["label"].nunique() == 2
    # every abnormality found its mask despite descriptive folders, shared series and crop/mask swaps
    assert len(index.rois) == len(truth_rois) == truth["n_lesions"].sum()
    by_image = index.rois.merge(images[["image_id", *key]], on="image_id").merge(
        truth[["image_id", *key]].rename(columns={"image_id": "truth_id"}), on=key)
    for truth_id, group in by_image.groupby("truth_id"):
        expected = sorted(truth_rois.loc[truth_rois["image_id"] == truth_id, "mask_pixels"])
        got = sorted(int(read_mask_dicom(p).sum()) for p in group["mask_path"])
        assert got == expected
        assert sorted(group["pathology"]) == sorted(
            "MALIGNANT" if p == "MALIGNANT" else "BENIGN"
            for p in truth_rois.loc[truth_rois["image_id"] == truth_id, "pathology"])


def test_inbreast_adapter_labels_patients_and_rois(synth_inbreast, tmp_path):
    truth, _ = _truth(synth_inbreast)
    index = build_index("inbreast", synth_inbreast, tmp_path / "index")
    kept = truth[truth["birads"] != "3"]
    assert {reason for _, reason in index.skipped} <= {"excluded: BI-RADS 3 (as in Shen et al.)"}
    assert len(index.skipped) == (truth["birads"] == "3").sum()
    images = index.images.set_index("image_id")
    assert sorted(images.index) == sorted(kept["image_id"])
    assert images["patient_id"].nunique() == kept["patient_id"].nunique()
    for _, row in kept.iterrows():
        got = images.loc[row["image_id"]]
        assert (got["label"], got["laterality"], got["view"]) == (row["label"], row["laterality"], row["view"])
    rois = index.rois
    with_rois = set(rois["image_id"])
    assert with_rois == set(kept.loc[kept["n_lesions"] > 0, "image_id"])
    for image_id, group in rois.groupby("image_id"):
        kinds = set(group["abnormality"])
        lesions = kept.set_index("image_id").at[image_id, "lesions"]
        assert ("mass" in kinds) == ("mass:" in lesions)
        assert ("calcification" in kinds) == ("calcification:" in lesions)


def test_manifest_adapter_reads_each_site(synth_sites, tmp_path):
    truth, _ = _truth(synth_sites)
    for site, expected in truth.groupby("site"):
        images = build_index("manifest", synth_sites / site, tmp_path / site).images
        assert len(images) == len(expected)
        assert list(images["label"]) == list(expected["label"])
        assert list(images["laterality"]) == list(expected["laterality"])
        assert list(images["view"]) == list(expected["view"])
        assert images["vendor"].nunique() == 1


def test_every_synthetic_image_reads_through_the_shared_reader(synth_cbis, synth_inbreast):
    for root in (synth_cbis, synth_inbreast):
        truth, _ = _truth(root)
        for path in truth["image_path"]:
            img = read_dicom(root / path)
            assert img.pixels.dtype == np.float32 and 0.0 <= img.pixels.min() and img.pixels.max() <= 1.0
            assert img.pixels.std() > 0.05
