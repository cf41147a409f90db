"""Synthetic mammogram generator (common.synth): layouts, headers, determinism, lesion signal."""

from __future__ import annotations

import csv
import plistlib
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image
from scipy import ndimage

from mammo_fl.common.utils.errors import ConfigError, DataError
from mammo_fl.common.synth import SynthConfig, generate_dataset, plan, render_image
from mammo_fl.common.synth.checks import lesion_signal_report
from mammo_fl.common.synth.cli import main as synth_main
from mammo_fl.common.synth.lesions import LesionSpec, render_calcifications, render_mass
from mammo_fl.common.synth.plan import PlanOptions, plan_inbreast, sample_lesion
from mammo_fl.common.synth.profiles import PROFILES
from synth_fixtures import TINY_SIZE, tiny_dataset


def _dicoms(root: Path) -> list[Path]:
    return sorted(root.rglob("*.dcm"))


# --- API, determinism, DICOM headers ----------------------------------------------------------


def test_same_seed_same_dataset_and_other_seed_differs(tmp_path):
    a = tiny_dataset("inbreast", tmp_path / "a", patients=2, seed=5)
    b = tiny_dataset("inbreast", tmp_path / "b", patients=2, seed=5)
    c = tiny_dataset("inbreast", tmp_path / "c", patients=2, seed=6)
    assert (a / "ground_truth.csv").read_text() == (b / "ground_truth.csv").read_text()
    fa, fb = _dicoms(a), _dicoms(b)
    assert [p.name for p in fa] == [p.name for p in fb] and len(fa) >= 4
    assert all(x.read_bytes() == y.read_bytes() for x, y in zip(fa, fb))
    first_c = pydicom.dcmread(_dicoms(c)[0]).pixel_array
    assert not np.array_equal(pydicom.dcmread(fa[0]).pixel_array, first_c)


def test_parallel_workers_give_identical_files(tmp_path):
    serial = tiny_dataset("manifest", tmp_path / "s", patients=2, seed=3, sites=2, workers=1)
    parallel = tiny_dataset("manifest", tmp_path / "p", patients=2, seed=3, sites=2, workers=2)
    fs, fp = _dicoms(serial), _dicoms(parallel)
    assert [p.relative_to(serial) for p in fs] == [p.relative_to(parallel) for p in fp]
    assert all(x.read_bytes() == y.read_bytes() for x, y in zip(fs, fp))


def test_parallel_generation_from_a_stdin_script(tmp_path):
    """Spawned workers cannot re-import a `python -` main module: the generator must not hang."""
    import subprocess
    import sys

    code = ("from common.synth import generate_dataset\n"
            f"generate_dataset('manifest', {str(tmp_path / 'd')!r}, 2, 1, sites=2, size=(96, 80), workers=2)\n")
    done = subprocess.run([sys.executable, "-"], input=code, text=True, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(pd.read_csv(tmp_path / "d" / "ground_truth.csv")) >= 4


def test_ffdm_headers_and_monochrome1_read_back_dense_bright(synth_sites):
    from mammo_fl.common.imaging.dicom import read_dicom

    truth = pd.read_csv(synth_sites / "ground_truth.csv", keep_default_na=False)
    photometrics = set()
    for _, row in truth.iterrows():
        ds = pydicom.dcmread(synth_sites / row["image_path"])
        assert ds.Modality == "MG" and ds.ImageLaterality == row["laterality"] and ds.ViewPosition == row["view"]
        assert float(ds.PixelSpacing[0]) > 0 and ds.Manufacturer and ds.BitsStored in (12, 14)
        assert ds.SeriesDescription == "full mammogram images" and "WindowCenter" in ds and "WindowWidth" in ds
        assert ds.pixel_array.shape == TINY_SIZE and ds.pixel_array.max() < 2**ds.BitsStored
        photometrics.add(ds.PhotometricInterpretation)
        assert ds.PhotometricInterpretation == row["photometric"]
        image = read_dicom(synth_sites / row["image_path"])  # shared reader: windows, MONOCHROME1
        breast = image.pixels > 0.05
        assert image.pixels[breast].mean() > image.pixels[~breast].mean() + 0.2  # tissue bright, air dark
    # site-3 is the Fuji profile (always MONOCHROME1); site-1 Hologic (MONOCHROME2)
    assert photometrics == {"MONOCHROME1", "MONOCHROME2"}
    vendors = truth.groupby("site")["vendor"].unique()
    assert len({v[0] for v in vendors}) == 3 and all(len(v) == 1 for v in vendors)


# --- layouts --------------------------------------------------------------------------------


def test_inbreast_layout_files_csv_and_xml(synth_inbreast):
    release = synth_inbreast / "INbreast Release 1.0"
    rows = list(csv.reader(open(release / "INbreast.csv"), delimiter=";"))
    assert rows[0] == ["Patient ID", "Patient age", "Laterality", "View", "Acquisition date", "File Name", "ACR",
                       "Bi-Rads"]
    body = rows[1:]
    assert all(r[0] == "removed" and r[1] == "removed" for r in body)
    assert any(r[6] != r[6].strip() for r in body)  # one ACR cell with stray whitespace, as in the release
    names = [p.name for p in (release / "AllDICOMs").iterdir()]
    pattern = re.compile(r"^(\d{8})_([0-9a-f]{16})_MG_([LR])_(CC|ML)_ANON\.dcm$")
    assert len(names) == len(body) and all(pattern.match(n) for n in names)
    truth = pd.read_csv(synth_inbreast / "ground_truth.csv", dtype={"image_id": str}, keep_default_na=False)
    with_lesions = set(truth.loc[truth["n_lesions"] > 0, "image_id"])
    xmls = {p.stem for p in (release / "AllXML").glob("*.xml")}
    assert xmls == with_lesions
    some = sorted(xmls)[0]
    plist = plistlib.load(open(release / "AllXML" / f"{some}.xml", "rb"))
    rois = plist["Images"][0]["ROIs"]
    assert plist["Images"][0]["NumberOfROIs"] == len(rois) >= 1
    assert all(re.match(r"^\(\d+\.\d+, \d+\.\d+\)$", p) for r in rois for p in r["Point_px"])
    assert {r["Name"] for r in rois} <= {"Mass", "Cluster", "Calcification"}
    birads = dict(zip(truth["image_id"], truth["birads"].astype(str)))
    for r in body:  # BI-RADS text agrees with the ground truth label
        assert r[7] == birads[r[5]]
        assert (r[7] in {"4a", "4b", "4c", "5", "6"}) == bool(truth.set_index("image_id").at[r[5], "label"])


def test_inbreast_default_cohort_matches_the_paper_size():
    cfg = SynthConfig("inbreast", Path("unused"), 115, seed=0).validate()
    images = plan(cfg)
    patients = {s.patient_id for s in images}
    b3 = {s.patient_id for s in images if s.birads == "3"}
    positive = {s.patient_id for s in images if s.label == 1}
    assert len(patients) == 115 and 390 <= len(images) <= 430
    assert len(b3) == 12 and 0.25 <= len(positive) / 115 <= 0.35
    assert (images[0].height, images[0].width) == (1152, 940)  # FFDM native size, INbreast aspect


def test_cbis_layout_csvs_and_tree(synth_cbis):
    mass = (synth_cbis / "mass_case_description_train_set.csv").read_text()
    calc = (synth_cbis / "calc_case_description_train_set.csv").read_text()
    assert mass.splitlines()[0].startswith("patient_id,breast_density,left or right breast,image view")
    assert calc.splitlines()[0].startswith("patient_id,breast density,left or right breast,image view")
    frames = [pd.read_csv(synth_cbis / f"{k}_case_description_{s}_set.csv", dtype=str)
              for k in ("mass", "calc") for s in ("train", "test")]
    rows = pd.concat(frames, ignore_index=True)
    assert len(rows) >= 8 and set(rows["pathology"]) <= {"MALIGNANT", "BENIGN", "BENIGN_WITHOUT_CALLBACK"}
    mass_rows = pd.concat(frames[:2])
    calc_rows = pd.concat(frames[2:])
    assert mass_rows["ROI mask file path"].str.endswith("\n").all()  # quirk: newline inside the quoted cell
    assert calc_rows["cropped image file path"].str.endswith("\n").all()
    assert rows["image file path"].str.match(r"^(Mass|Calc)-(Training|Test)_P_\d{5}_(LEFT|RIGHT)_(CC|MLO)/[\d.]+/[\d.]+/000000\.dcm$").all()
    tree = synth_cbis / "CBIS-DDSM"
    full = [p for p in tree.rglob("1-1.dcm") if "full mammogram images" in p.parent.name]
    truth = pd.read_csv(synth_cbis / "ground_truth.csv", keep_default_na=False)
    assert (truth["n_lesions"] >= 1).all()  # CBIS-DDSM has no normal images
    assert len(full) >= len(truth)
    for path in full:
        assert re.match(r"^\d\d-\d\d-20\d\d-DDSM-NA-\d{5}$", path.parent.parent.name)
        ds = pydicom.dcmread(path)
        assert ds.PhotometricInterpretation == "MONOCHROME2" and ds.BitsStored == 16 and ds.Modality == "MG"
        assert ds.PatientID == path.parent.parent.parent.name  # CBIS puts the case folder name in PatientID
    masks = [p for p in tree.rglob("*.dcm") if pydicom.dcmread(p, stop_before_pixels=True).SeriesDescription == "ROI mask images"]
    assert len(masks) == len(rows)
    for m in masks:
        arr = pydicom.dcmread(m).pixel_array
        assert arr.shape == TINY_SIZE and set(np.unique(arr)) == {0, 255}


def test_cbis_classic_tree_resolves_csv_paths_and_swaps_some_rows(tmp_path):
    root = tiny_dataset("cbis-ddsm", tmp_path / "classic", patients=14, seed=4, cbis_tree="classic")
    rows = pd.concat([pd.read_csv(p, dtype=str) for p in root.glob("*_case_description_*.csv")])
    swapped = 0
    for _, row in rows.iterrows():
        full = root / "CBIS-DDSM" / row["image file path"].strip()
        mask = root / "CBIS-DDSM" / row["ROI mask file path"].strip()
        assert full.is_file() and mask.is_file()
        shape = pydicom.dcmread(full).pixel_array.shape
        swapped += pydicom.dcmread(mask).pixel_array.shape != shape  # CSV column names the crop
    assert 0 < swapped < len(rows)


def test_manifest_sites(synth_sites):
    truth = pd.read_csv(synth_sites / "ground_truth.csv", keep_default_na=False)
    assert sorted(p.name for p in synth_sites.iterdir() if p.is_dir()) == ["site-1", "site-2", "site-3"]
    total = 0
    for site in ("site-1", "site-2", "site-3"):
        m = pd.read_csv(synth_sites / site / "manifest.csv", keep_default_na=False)
        assert list(m.columns) == ["image_path", "patient_id", "label", "laterality", "view", "vendor"]
        assert all((synth_sites / site / p).is_file() for p in m["image_path"])
        assert m["patient_id"].nunique() == 3 and set(m["label"]) <= {0, 1}
        assert m["vendor"].nunique() == 1
        total += len(m)
    assert total == len(truth) and truth["label"].sum() > 0


# --- lesions ------------------------------------------------------------------------------------


def test_lesion_scale_at_paper_resolution():
    rng = np.random.default_rng(0)
    masses = [sample_lesion("mass", p, rng) for p in ("MALIGNANT", "BENIGN") for _ in range(50)]
    assert all(0.06 <= m.size_frac <= 0.2 for m in masses)
    fine = LesionSpec("calcification", "MALIGNANT", "fine_pleomorphic", 0.07, 0.5, 3)
    specks = render_calcifications(fine, (448.0, 576.0), 896, 1.0).specks
    assert len(specks) >= 10 and min(2 * r for _, _, r in specks) >= 4.0  # >= 4 px at 1152x896
    spic = render_mass(LesionSpec("mass", "MALIGNANT", "spiculated", 0.12, 0.15, 9), (448.0, 576.0), 896, 1.0)
    reach = np.hypot(spic.polygon[:, 0] - 448, spic.polygon[:, 1] - 576).max()
    assert reach > 1.3 * 0.12 * 896 / 2  # spicules extend well beyond the core (~tens of px)


def test_malignancy_is_in_morphology_not_in_image_statistics():
    """Whole-image statistics barely predict the label; ROI shape/texture separate benign vs malignant."""
    specs = plan_inbreast(36, PlanOptions(288, 224, seed=21, prevalence=0.5), PROFILES["siemens-mammomat"])
    report = lesion_signal_report([render_image(s) for s in specs])
    assert report.n_rois >= 40
    assert report.image_stat_auc <= 0.7, report
    assert report.roi_auc >= 0.85, report


def test_secondary_signs_thicken_the_skin_of_malignant_images_only():
    """Skin thickening: malignant images only, away from every lesion, nothing else in the image moves."""
    specs = plan_inbreast(8, PlanOptions(288, 224, seed=5, prevalence=0.5), PROFILES["siemens-mammomat"])
    assert {s.label for s in specs} == {0, 1}
    changed = 0
    for spec in specs:
        plain, signed = render_image(spec), render_image(spec, secondary_signs=1.0)
        assert [r.bbox for r in plain.rois] == [r.bbox for r in signed.rois]
        diff = np.abs(signed.acquired.pixels.astype(float) - plain.acquired.pixels.astype(float)) > 0
        if spec.label == 0:
            assert not diff.any()
            continue
        changed += 1
        assert diff.any()
        near_skin = ~ndimage.binary_erosion(plain.breast, iterations=15)  # the outer 15 px of the breast
        assert not diff[~near_skin].any() and diff[near_skin & plain.breast].mean() > 0.1
    assert changed >= 1


# --- errors and CLI -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(layout="dicom"), "unknown layout"),
        (dict(patients=0), "patients"),
        (dict(sites=3), "needs --layout manifest"),
        (dict(size=(32, 32)), "size"),
        (dict(prevalence=1.5), "prevalence"),
        (dict(domain="xray"), "domain"),
        (dict(vendor="acme"), "vendor"),
    ],
)
def test_bad_options_are_config_errors(tmp_path, kwargs, message):
    args = dict(layout="inbreast", out_dir=tmp_path / "x", patients=2) | kwargs
    layout, out, patients = args.pop("layout"), args.pop("out_dir"), args.pop("patients")
    with pytest.raises(ConfigError, match=message):
        generate_dataset(layout, out, patients, **args)
    assert not (tmp_path / "x").exists()


def test_refuses_foreign_or_existing_output(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="not empty"):
        tiny_dataset("inbreast", foreign, patients=1)
    assert (foreign / "notes.txt").read_text() == "keep me"
    out = tiny_dataset("inbreast", tmp_path / "ok", patients=1)
    with pytest.raises(DataError, match="overwrite"):
        tiny_dataset("inbreast", out, patients=1)
    tiny_dataset("inbreast", out, patients=1, seed=2, overwrite=True)


def test_write_failures_are_one_line_data_errors(tmp_path):
    from mammo_fl.common.synth.generate import _checked, _render_and_write

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(DataError, match="cannot create the output folder"):
        tiny_dataset("inbreast", blocker / "out", patients=1)
    cfg = SynthConfig("manifest", blocker, 1, size=TINY_SIZE).validate()
    result = _render_and_write(("manifest", plan(cfg)[0], str(blocker), 1.0, 0.0, {}))
    assert "cannot write" in result["error"] and "\n" not in result["error"]
    with pytest.raises(DataError, match="cannot write"):
        _checked(result)


def test_cli_writes_dataset_and_preview_and_reports_errors_in_one_line(tmp_path, capsys):
    out = tmp_path / "cbis"
    rc = synth_main(["--layout", "cbis-ddsm", "--out", str(out), "--patients", "3", "--seed", "1",
                     "--size", "320x256", "--workers", "1", "--quiet"])
    assert rc == 0 and len(pd.read_csv(out / "ground_truth.csv")) >= 3
    png = tmp_path / "preview.png"
    assert synth_main(["--preview", str(out), "--out", str(png), "--preview-count", "4"]) == 0
    with Image.open(png) as im:
        assert im.size[0] > 400 and np.asarray(im.convert("L")).std() > 10
    capsys.readouterr()
    assert synth_main(["--preview", str(tmp_path / "nothing"), "--out", str(png)]) == 2
    err = capsys.readouterr().err.strip()
    assert "no ground_truth.csv" in err and "\n" not in err and "Traceback" not in err
    assert synth_main(["--layout", "inbreast", "--out", str(tmp_path / "p"), "--patients", "1",
                       "--set", "colour=1"]) == 2
    assert "unknown config key" in capsys.readouterr().err


def test_cli_vendor_picks_the_acquisition_profile_of_a_cbis_cohort(tmp_path):
    """`--vendor` renders the same cohort (patients, lesions, labels) through another profile:
    the cross-profile check of docs/results.md trains on one and tests on the other."""
    common = ["--layout", "cbis-ddsm", "--patients", "2", "--seed", "3", "--size", "320x256", "--workers", "1",
              "--quiet"]
    assert synth_main(common + ["--out", str(tmp_path / "howtek")]) == 0
    assert synth_main(common + ["--out", str(tmp_path / "lumisys"), "--vendor", "lumisys-film"]) == 0
    a, b = (pd.read_csv(tmp_path / name / "ground_truth.csv") for name in ("howtek", "lumisys"))
    assert set(a["vendor"]) == {"howtek-film"} and set(b["vendor"]) == {"lumisys-film"}
    cols = ["image_id", "patient_id", "label", "lesions", "laterality", "view"]
    assert a[cols].equals(b[cols])
    ds = pydicom.dcmread(_dicoms(tmp_path / "lumisys")[0], stop_before_pixels=True)
    assert ds.Manufacturer == PROFILES["lumisys-film"].manufacturer
    pa = pydicom.dcmread(_dicoms(tmp_path / "howtek")[0]).pixel_array
    pb = pydicom.dcmread(_dicoms(tmp_path / "lumisys")[0]).pixel_array
    assert pa.shape == pb.shape and not np.array_equal(pa, pb)
