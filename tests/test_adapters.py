"""CBIS-DDSM and INbreast adapters on crafted trees in the real layouts."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from data_fixtures import cbis_case, make_cbis_tree, make_inbreast_tree, write_dicom
from PIL import Image

from mammo_fl.common.imaging.adapters import build_index
from mammo_fl.common.imaging.adapters.cbis_ddsm import read_case_csv
from mammo_fl.common.utils.errors import ConfigError, DataError
from mammo_fl.common.imaging.index import load_index, write_index
from mammo_fl.common.imaging.cache import ImageCache
from mammo_fl.common.imaging.geometry import PreprocessSettings

CASES = [
    cbis_case("P_00001", "LEFT", "CC", "mass", "Training", 1, "MALIGNANT"),
    cbis_case("P_00001", "LEFT", "CC", "mass", "Training", 2, "BENIGN"),  # second abnormality, same view
    cbis_case("P_00001", "LEFT", "CC", "calc", "Training", 1, "BENIGN_WITHOUT_CALLBACK"),  # same view via calc CSV
    cbis_case("P_00002", "RIGHT", "MLO", "calc", "Test", 1, "BENIGN"),
    cbis_case("P_00003", "LEFT", "MLO", "mass", "Test", 1, "MALIGNANT"),
]


@pytest.mark.parametrize("layout,swap,same_series", [("nbia", False, False), ("nbia", True, True), ("classic", True, False)])
def test_cbis_ddsm_layouts(tmp_path, layout, swap, same_series):
    src = make_cbis_tree(tmp_path / "src", CASES, layout=layout, swap_crop_mask_files=swap,
                         same_series_folder=same_series)
    tables = build_index("cbis-ddsm", src, tmp_path / "idx")
    images = tables.images.set_index("image_id")
    assert sorted(images.index) == ["P_00001_L_CC", "P_00002_R_MLO", "P_00003_L_MLO"]
    assert images.loc["P_00001_L_CC", "label"] == 1  # any MALIGNANT
    assert images.loc["P_00002_R_MLO", "label"] == 0
    assert images.loc["P_00001_L_CC", "abnormalities"] == 3
    assert (images.loc["P_00002_R_MLO", "laterality"], images.loc["P_00002_R_MLO", "view"]) == ("R", "MLO")
    assert images.loc["P_00002_R_MLO", "official_split"] == "test"
    assert all(Path(p).is_file() and Path(p).is_absolute() for p in images["image_path"])
    assert "Training_P_00001_LEFT_CC" in images.loc["P_00001_L_CC", "image_path"]
    rois = tables.rois
    assert len(rois) == 5 and rois["roi_id"].is_unique
    assert set(rois["pathology"]) == {"MALIGNANT", "BENIGN"}
    assert set(rois.loc[rois["image_id"] == "P_00001_L_CC", "abnormality"]) == {"mass", "calcification"}
    # every ROI is the mask (same shape as the image), never the small crop
    cache = ImageCache(tmp_path / "cache", PreprocessSettings(32, 24, "paper"), min_side=16)
    for _, roi in rois.iterrows():
        image_path = images.loc[roi["image_id"], "image_path"]
        mask = cache.load_mask(roi["mask_path"], image_path)
        assert mask.shape == (32, 24) and 0 < mask.mean() < 0.2
    write_index(tmp_path / "idx", tables.images, tables.rois)
    assert len(load_index(tmp_path / "idx").rois) == 5


def test_cbis_csv_quirks(tmp_path):
    src = make_cbis_tree(tmp_path / "src", CASES[:4])
    mass = read_case_csv(src / "mass_case_description_train_set.csv")
    calc = read_case_csv(src / "calc_case_description_train_set.csv")
    assert "breast_density" in mass.columns and "breast_density" in calc.columns
    assert not mass["roi_mask_file_path"].str.contains("\n").any()


def test_cbis_missing_files_are_skipped_with_reasons(tmp_path):
    src = make_cbis_tree(tmp_path / "src", CASES)
    # remove one full image and one ROI folder, add a junk .dcm
    for p in (src / "CBIS-DDSM" / "Mass-Test_P_00003_LEFT_MLO").rglob("*.dcm"):
        p.unlink()
    for p in (src / "CBIS-DDSM" / "Calc-Test_P_00002_RIGHT_MLO_1").rglob("*.dcm"):
        p.unlink()
    (src / "CBIS-DDSM" / "junk.dcm").write_text("not dicom")
    tables = build_index("cbis-ddsm", src, tmp_path / "idx")
    assert sorted(tables.images["image_id"]) == ["P_00001_L_CC", "P_00002_R_MLO"]
    reasons = " | ".join(f"{p}: {r}" for p, r in tables.skipped)
    assert "Mass-Test_P_00003_LEFT_MLO: full mammogram DICOM not found" in reasons
    assert "Calc-Test_P_00002_RIGHT_MLO_1: ROI folder not found" in reasons
    assert "junk.dcm: not a DICOM file" in reasons


def test_cbis_mask_with_wrong_shape_is_skipped(tmp_path):
    src = make_cbis_tree(tmp_path / "src", CASES[3:4])
    roi_dir = src / "CBIS-DDSM" / "Calc-Test_P_00002_RIGHT_MLO_1"
    for p in roi_dir.rglob("*.dcm"):
        write_dicom(p, np.zeros((30, 30), np.uint16))  # neither file matches the full image
    tables = build_index("cbis-ddsm", src, tmp_path / "idx")
    assert len(tables.images) == 1 and tables.rois.empty
    assert any("full image's shape" in r for _, r in tables.skipped)


def test_cbis_no_csv(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="case-description"):
        build_index("cbis-ddsm", tmp_path / "empty", tmp_path / "idx")
    with pytest.raises(ConfigError):
        build_index("ddsm", tmp_path / "empty", tmp_path / "idx")


INBREAST = [
    {"id": "20586908", "hash": "6c613a14b80a8591", "side": "R", "view": "CC", "birads": "4b",
     "rois": [("Mass", [(100, 150), (150, 150), (150, 200), (100, 200)]),
              ("Calcification", [(100, 300)]), ("Calcification", [(105, 303), (106, 304)]),  # one cluster
              ("Calcification", [(250, 30)]),  # another cluster (far away)
              ("Distortion", [(5, 5), (8, 5), (8, 8)])]},
    {"id": "20586960", "hash": "6c613a14b80a8591", "side": "R", "view": "MLO", "birads": "2"},
    {"id": "22678622", "hash": "aaaa000011112222", "side": "L", "view": "CC", "birads": "3"},  # excluded
    {"id": "22678700", "hash": "aaaa000011112222", "side": "L", "view": "MLO", "birads": "1", "dicom": False},
    {"id": "30000001", "hash": "bbbb000011112222", "side": "L", "view": "MLO", "birads": "5", "in_csv": False},
]


def test_inbreast(tmp_path):
    src = make_inbreast_tree(tmp_path / "src", INBREAST, shape=(400, 300))  # cluster distance 10 px
    out = tmp_path / "idx"
    tables = build_index("inbreast", src, out)
    images = tables.images.set_index("image_id")
    assert sorted(images.index) == ["20586908", "20586960"]
    assert images.loc["20586908", "label"] == 1 and images.loc["20586960", "label"] == 0
    assert images.loc["20586960", "view"] == "MLO"  # ML in the file name
    assert set(images["patient_id"]) == {"6c613a14b80a8591"}
    assert images.loc["20586908", "ignored_rois"] == 1  # the distortion
    reasons = {Path(p).name if p.endswith(".dcm") else p: r for p, r in tables.skipped}
    assert any("BI-RADS 3" in r for r in reasons.values())
    assert any("File Name 22678700: no DICOM" in r for r in reasons.values())
    assert reasons["30000001_bbbb000011112222_MG_L_ML_ANON.dcm"] == "not listed in INbreast.csv"
    rois = tables.rois
    assert sorted(rois["abnormality"]) == ["calcification", "calcification", "mass"]
    assert set(rois["pathology"]) == {"MALIGNANT"}
    mass = np.asarray(Image.open(rois.loc[rois["abnormality"] == "mass", "mask_path"].iloc[0])) > 0
    assert mass.shape == (400, 300) and mass[175, 125] and not mass[140, 125]  # (x=125, y=175) inside
    calcs = [np.asarray(Image.open(p)) > 0 for p in rois.loc[rois["abnormality"] == "calcification", "mask_path"]]
    near = next(c for c in calcs if c[300, 100])
    assert near[304, 106] and not near[30, 250]  # the two close marks share a mask, the far one does not
    assert not near[300, 103]  # drawn as discs, not filled between marks
    assert all(Path(p).parent == out / "masks" for p in rois["mask_path"])


def test_inbreast_bad_xml_keeps_image(tmp_path):
    src = make_inbreast_tree(tmp_path / "src", INBREAST[:2])
    (src / "AllXML" / "20586908.xml").write_text("<plist><broken")
    tables = build_index("inbreast", src, tmp_path / "idx")
    assert len(tables.images) == 2 and tables.rois.empty
    assert any("unreadable ROI plist" in r for _, r in tables.skipped)


def test_inbreast_without_csv(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(DataError, match="INbreast.csv"):
        build_index("inbreast", tmp_path / "x", tmp_path / "idx")


# ----------------------------------------------------------------------------- mammo-data CLI


def run_cli(capsys, *argv):
    from mammo_fl.common.cli.data import main

    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_index_split_preprocess(tmp_path, capsys):
    src = make_cbis_tree(tmp_path / "src", CASES)
    idx = tmp_path / "idx"
    code, out, _ = run_cli(capsys, "index", "--format", "cbis-ddsm", str(src), "--out", str(idx))
    assert code == 0 and "indexed 3 images, 3 patients, 2 positive, 5 ROIs" in out
    code, out, _ = run_cli(capsys, "split", "--index", str(idx), "--scheme", "ddsm", "--seed", "3")
    assert code == 0 and (idx / "split.csv").is_file() and "train" in out
    first = (idx / "split.csv").read_text()
    code, out, _ = run_cli(capsys, "split", "--index", str(idx), "--scheme", "ddsm", "--seed", "9")
    assert code == 0 and "reusing existing" in out and (idx / "split.csv").read_text() == first
    code, out, _ = run_cli(capsys, "preprocess", "--index", str(idx), "--size", "32x24", "--workers", "1",
                           "--min-side", "16", "--quiet")
    assert code == 0 and "images: 3 cached (3 new)" in out and "masks: 5 cached" in out and "mean grey" in out
    key = PreprocessSettings(32, 24, "paper").key()
    assert len(list((idx / "cache" / key / "images").rglob("*.png"))) == 3
    assert re.search(r"mean grey \(0\.\.255\) over train split \(\d+ images\): \d+\.\d\d", out)
    code, out, _ = run_cli(capsys, "preprocess", "--index", str(idx), "--size", "32x24", "--workers", "1",
                           "--min-side", "16", "--quiet")
    assert code == 0 and "images: 3 cached (0 new)" in out  # idempotent


def test_cli_preprocess_skips_bad_images_and_reports(tmp_path, capsys):
    site = tmp_path / "site"
    write_dicom(site / "ok.dcm", np.full((64, 48), 30000, np.uint16))
    write_dicom(site / "ct.dcm", np.full((64, 48), 30000, np.uint16), modality="CT")
    (site / "manifest.csv").write_text("image_path,patient_id,label\nok.dcm,p1,1\nct.dcm,p2,0\n")
    idx = tmp_path / "idx"
    assert run_cli(capsys, "index", "--format", "manifest", str(site), "--out", str(idx))[0] == 0
    code, out, _ = run_cli(capsys, "preprocess", "--index", str(idx), "--size", "32x24", "--workers", "1",
                           "--min-side", "16", "--quiet")
    assert code == 0 and "images: 1 cached" in out and "skipped: 1 images" in out and "modality CT" in out
    # default min side: nothing usable -> non-zero exit and a one-line error
    code, out, err = run_cli(capsys, "preprocess", "--index", str(idx), "--size", "32x24", "--workers", "1",
                             "--cache", str(tmp_path / "c2"), "--quiet")
    assert code == 2 and err.count("\n") == 1 and "no image could be preprocessed" in err


@pytest.mark.parametrize("argv,words", [
    (["index", "--format", "manifest", "{missing}", "--out", "{out}"], "source folder not found"),
    (["index", "--format", "inbreast", "{empty}", "--out", "{out}"], "no INbreast.csv"),
    (["split", "--index", "{empty}"], "not an index directory"),
    (["preprocess", "--index", "{empty}", "--size", "12"], "not an index directory"),
    (["split", "--index", "{idx}", "--fractions", "train=0.5,val=0.1"], "summing to 1"),
])
def test_cli_errors_are_one_line(tmp_path, capsys, argv, words):
    (tmp_path / "empty").mkdir()
    site = make_site_with_one_image(tmp_path / "site")
    from mammo_fl.common.cli.data import main

    assert main(["index", "--format", "manifest", str(site), "--out", str(tmp_path / "idx")]) == 0
    capsys.readouterr()
    fill = {"missing": tmp_path / "missing", "out": tmp_path / "o", "empty": tmp_path / "empty", "idx": tmp_path / "idx"}
    code, _, err = run_cli(capsys, *[a.format(**fill) for a in argv])
    assert code == 2 and words in err and err.count("\n") == 1 and "Traceback" not in err


def test_cli_index_with_nothing_usable(tmp_path, capsys):
    src = make_cbis_tree(tmp_path / "src", CASES[:1])
    for p in src.rglob("*.dcm"):
        p.unlink()
    code, out, err = run_cli(capsys, "index", "--format", "cbis-ddsm", str(src), "--out", str(tmp_path / "idx"))
    assert code == 2 and "no usable cbis-ddsm images" in err and "full mammogram DICOM not found" in out
    assert (tmp_path / "idx" / "skipped.csv").is_file()


def make_site_with_one_image(site: Path) -> Path:
    write_dicom(site / "a.dcm", np.full((64, 48), 30000, np.uint16))
    (site / "manifest.csv").write_text("image_path,patient_id,label\na.dcm,p1,1\n")
    return site


# ------------------------------------------------------------------ engineer B's generator


def _against_ground_truth(tables, root: Path) -> None:
    import os

    import pandas as pd

    truth = pd.read_csv(root / "ground_truth.csv")
    truth["key"] = [os.path.realpath(root / p) for p in truth["image_path"]]
    got = tables.images.assign(key=[os.path.realpath(p) for p in tables.images["image_path"]])
    merged = got.merge(truth, on="key", suffixes=("", "_truth"))
    assert len(merged) == len(got) > 0
    assert (merged["label"] == merged["label_truth"]).all()
    assert (merged["laterality"] == merged["laterality_truth"]).all()
    assert (merged["view"] == merged["view_truth"]).all()
    assert (merged["patient_id"].astype(str) == merged["patient_id_truth"].astype(str)).all()


@pytest.mark.parametrize("fixture,fmt", [("synth_cbis", "cbis-ddsm"), ("synth_inbreast", "inbreast")])
def test_synthetic_annotated_sets_index_like_their_ground_truth(request, tmp_path, fixture, fmt):
    root = request.getfixturevalue(fixture)
    tables = build_index(fmt, root, tmp_path / "idx")
    assert not [s for s in tables.skipped if "BI-RADS 3" not in s[1]], tables.skipped
    _against_ground_truth(tables, root)
    assert tables.rois is not None and not tables.rois.empty


def test_synthetic_sites_read_as_manifests(synth_sites, tmp_path):
    sites = sorted(p for p in synth_sites.iterdir() if (p / "manifest.csv").is_file())
    assert len(sites) == 3
    for site in sites:
        tables = build_index("manifest", site, tmp_path / site.name)
        _against_ground_truth(tables, synth_sites)
