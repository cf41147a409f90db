"""`mammo-train`: the whole pipeline on a tiny synthetic CBIS-DDSM dataset, step files, predict, errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mammo_fl.common.models.checkpoint import load_checkpoint, read_checkpoint_meta
from mammo_fl.common.cli.data import main as data_main
from mammo_fl.common.cli.train import main as train_main
from mammo_fl.common.pipeline.patches import PATCH_CLASSES, load_patch_set

# Tiny everything: 96x72 images, 24 px patches, one epoch per stage, a small top.
TINY = [
    "threads=1", "progress=false", "data.height=96", "data.width=72", "data.workers=1", "patches.patch_size=24",
    "patch_train.stage1.epochs=1", "patch_train.stage2.epochs=1", "patch_train.stage3.epochs=1",
    "patch_model.arch='resnet_tiny'", "whole_train.stage1.epochs=1", "whole_train.stage2.epochs=1",
    "whole_train.batch_size=4", "evaluate.bootstrap=50", "tops.allconv.blocks=[[8,8,16,1],[8,8,16,1]]",
    "baseline.n_estimators=20",
]


def _sets(extra: list[str] | None = None) -> list[str]:
    out = []
    for item in TINY + (extra or []):
        out += ["--set", item]
    return out


@pytest.fixture(scope="module")
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def index_dir(synth_cbis, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("train_cli_index") / "idx"
    assert data_main(["index", "--format", "cbis-ddsm", str(synth_cbis), "--out", str(out)]) == 0
    assert data_main(["split", "--index", str(out), "--fractions", "train=0.5,val=0.25,test=0.25"]) == 0
    return out


@pytest.fixture(scope="module")
def run_dir(index_dir, tmp_path_factory, one_thread) -> Path:
    out = tmp_path_factory.mktemp("train_cli_run") / "run"
    assert train_main(["run", "--preset", "cpu", "--data", str(index_dir), "--out", str(out), "--baseline",
                       *_sets()]) == 0
    return out


def test_run_writes_the_promised_files(run_dir: Path, index_dir: Path) -> None:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("test_auc", "test_auc_ci", "test_a_auc", "val_auc", "baseline_test_auc", "timings_s"):
        assert key in metrics
    assert 0.0 <= metrics["test_auc"] <= 1.0 and len(metrics["test_auc_ci"]) == 2
    assert (run_dir / "roc.png").read_bytes()[:4] == b"\x89PNG"
    pred = pd.read_csv(run_dir / "predictions.csv", dtype={"image_id": str})
    split = pd.read_csv(index_dir / "split.csv", dtype=str)
    images = pd.read_csv(index_dir / "images.csv", dtype={"image_id": str, "patient_id": str})
    test_ids = set(images[images["patient_id"].isin(split.loc[split["split"] == "test", "patient_id"])]["image_id"])
    assert set(pred["image_id"]) == test_ids
    assert {"image_id", "malignant_prob", "label", "malignant_prob_tta"} <= set(pred.columns)
    assert pred["malignant_prob"].between(0, 1).all()


def test_checkpoint_is_self_describing(run_dir: Path) -> None:
    meta = read_checkpoint_meta(run_dir / "whole_image.pt")
    assert meta["kind"] == "whole_image" and meta["class_names"] == ["not_malignant", "malignant"]
    prep = json.loads((run_dir / "preprocessing.json").read_text())
    assert meta["preprocessing"] == prep and prep["height"] == 96 and prep["width"] == 72
    assert meta["model_spec"]["trunk"] == "resnet_tiny" and meta["provenance"]["step"] == "train-whole"
    ckpt = load_checkpoint(run_dir / "whole_image.pt")
    with torch.no_grad():
        out = ckpt.model(torch.zeros(1, 3, 96, 72))
    assert out.shape == (1, 2)
    patch = load_checkpoint(run_dir / "patch_model.pt")
    assert patch.kind == "patch" and patch.class_names == list(PATCH_CLASSES)
    assert patch.preprocessing["height"] == 24 and patch.preprocessing["mean"] == prep["mean"]
    # the whole-image trunk started from the patch trunk: stage 2 trained it, so it moved, but exists 1:1
    assert set(patch.model.trunk.state_dict()) == set(ckpt.model.trunk.state_dict())


def test_patch_set_has_split_hygiene(run_dir: Path, index_dir: Path) -> None:
    table = load_patch_set(run_dir / "patches")
    split = pd.read_csv(index_dir / "split.csv", dtype=str)
    test_patients = set(split.loc[split["split"] == "test", "patient_id"])
    assert set(table["split"]) <= {"train", "val"} and "train" in set(table["split"])
    assert not set(table["patient_id"]) & test_patients
    by_patient = dict(zip(split["patient_id"], split["split"]))
    assert (table["patient_id"].map(by_patient) == table["split"]).all()
    assert set(table["class"]) <= set(PATCH_CLASSES) and "background" in set(table["class"])
    assert all(Path(p).is_file() for p in table["abs_path"])


def test_patch_set_is_the_same_with_parallel_blob_search(run_dir: Path, index_dir: Path, tmp_path: Path) -> None:
    # the LoG blob search runs in worker processes ahead of the seeded draws: same patches, same pixels
    assert train_main(["patches", "--preset", "cpu", "--data", str(index_dir), "--out", str(tmp_path / "par"),
                       *_sets(["data.workers=2"])]) == 0
    one, two = load_patch_set(run_dir / "patches"), load_patch_set(tmp_path / "par" / "patches")
    assert (one["source"] == "blob").any()  # the parallel part was exercised
    columns = ["path", "image_id", "class", "x", "y", "roi_id", "source"]
    pd.testing.assert_frame_equal(one[columns], two[columns])
    for a, b in zip(one["abs_path"], two["abs_path"], strict=True):
        assert Path(a).read_bytes() == Path(b).read_bytes()


def test_rerun_reuses_finished_steps(run_dir: Path, index_dir: Path, tmp_path: Path) -> None:
    before = (run_dir / "whole_image.pt").stat().st_mtime_ns
    patch_before = (run_dir / "patch_model.pt").stat().st_mtime_ns
    assert train_main(["run", "--data", str(index_dir), "--out", str(run_dir), *_sets()]) == 0
    assert (run_dir / "patch_model.pt").stat().st_mtime_ns == patch_before  # reused
    assert (run_dir / "whole_image.pt").stat().st_mtime_ns == before  # training already finished: resumed as done
    # a changed patch setting retrains the patch classifier (and restarts the whole-image training)
    assert train_main(["run", "--data", str(index_dir), "--out", str(run_dir),
                       *_sets(["patch_train.stage3.epochs=2"])]) == 0
    assert (run_dir / "patch_model.pt").stat().st_mtime_ns != patch_before
    assert len(load_checkpoint(run_dir / "patch_model.pt").provenance["history"]) == 4
    assert (run_dir / "whole_image.pt").stat().st_mtime_ns != before


def test_predict_on_dicoms_and_index(run_dir: Path, index_dir: Path, tmp_path: Path) -> None:
    images = pd.read_csv(index_dir / "images.csv")
    folder = tmp_path / "dicoms"
    folder.mkdir()
    for i, path in enumerate(images["image_path"][:3]):
        shutil.copy(path, folder / f"img{i}.dcm")
    (folder / "broken.dcm").write_bytes(b"not a dicom")
    out = tmp_path / "preds.csv"
    assert train_main(["predict", "--model", str(run_dir / "whole_image.pt"), str(folder), "--out", str(out),
                       "--tta", "--quiet", "--workers", "1"]) == 0
    pred = pd.read_csv(out)
    assert list(pred.columns) == ["image_id", "malignant_prob"] and sorted(pred["image_id"]) == ["img0", "img1", "img2"]
    out2 = tmp_path / "preds_idx.csv"
    assert train_main(["predict", "--model", str(run_dir / "whole_image.pt"), "--data", str(index_dir),
                       "--split", "test", "--out", str(out2), "--quiet", "--workers", "1"]) == 0
    ref = pd.read_csv(run_dir / "predictions.csv", dtype={"image_id": str})
    got = pd.read_csv(out2, dtype={"image_id": str})
    merged = ref.merge(got, on="image_id", suffixes=("_run", "_pred"))
    assert len(merged) == len(ref) and "label" in got.columns
    assert np.allclose(merged["malignant_prob_run"], merged["malignant_prob_pred"], atol=1e-5)


def test_evaluate_ensemble_takes_several_checkpoints(run_dir: Path, index_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy.pt"
    shutil.copy(run_dir / "whole_image.pt", copy)
    out = tmp_path / "ens"
    assert train_main(["evaluate", "--data", str(index_dir), "--out", str(run_dir), "--eval-out", str(out),
                       "--model", str(run_dir / "whole_image.pt"), str(copy), *_sets()]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["checkpoints"]) == 2
    ref = pd.read_csv(run_dir / "predictions.csv", dtype={"image_id": str}).set_index("image_id")
    got = pd.read_csv(out / "predictions.csv", dtype={"image_id": str}).set_index("image_id")
    # the mean of two identical models is the model
    assert np.allclose(got.loc[ref.index, "malignant_prob"], ref["malignant_prob"], atol=1e-5)


def test_bad_input_is_one_line_error(index_dir: Path, tmp_path: Path, capsys) -> None:
    assert train_main(["run", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r")]) == 2
    assert train_main(["run", "--data", str(index_dir), "--out", str(tmp_path / "r"),
                       "--set", "patch_train.stage9.epochs=1"]) == 2
    assert train_main(["predict", "--model", str(tmp_path / "missing.pt"), str(tmp_path), "--out",
                       str(tmp_path / "p.csv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith(("mammo-train: error:", "pytest: error:", "__main__")) or
                                 "error:" in line for line in err)
    assert "Traceback" not in "\n".join(err)


def test_paper_preset_is_the_paper_schedule() -> None:
    from mammo_fl.common.models import PAPER_TOPS
    from mammo_fl.common.pipeline.settings import load_run_settings

    cfg = load_run_settings("paper")
    prep = cfg.data.preprocess
    assert (prep.height, prep.width, cfg.patches.patch_size) == (1152, 896, 224)
    assert cfg.patch_model.arch == "resnet50" and cfg.whole_model.top_spec == PAPER_TOPS["resnet_512x2"]
    assert [(s.trainable, s.epochs, s.lr) for s in cfg.patch_train.stages] == [
        ("head", 3, 1e-3), ("top", 10, 1e-4), ("all", 37, 1e-5)]
    assert [(s.trainable, s.epochs, s.lr, s.weight_decay) for s in cfg.whole_train.stages] == [
        ("top", 30, 1e-4, 1e-3), ("all", 20, 1e-5, 1e-2)]
    assert cfg.patch_train.batch_size == 32 and cfg.whole_train.batch_size == 2
    assert cfg.baseline.min_samples_split == 300 and cfg.baseline.n_estimators == 500
    cpu = load_run_settings("cpu", ["whole_model.top=heatmap_fc"])
    assert cpu.whole_model.top_spec["type"] == "heatmap_fc"


def test_compare_cli_pairs_allconv_with_the_baseline(run_dir: Path, index_dir: Path, tmp_path: Path, capsys) -> None:
    """The real files of one run: predictions.csv (all-convolutional) vs baseline_predictions_test.csv."""
    baseline = run_dir / "baseline_predictions_test.csv"
    out = tmp_path / "cmp.json"
    assert train_main(["compare", str(run_dir / "predictions.csv"), str(baseline), "--data", str(index_dir),
                       "--bootstrap", "200", "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert record["auc_a"] == pytest.approx(metrics["test_auc"], abs=1e-3)
    # baseline.json, not metrics.json: a test above re-runs the pipeline without --baseline
    baseline_record = json.loads((run_dir / "baseline.json").read_text())
    assert record["auc_b"] == pytest.approx(baseline_record["baseline_test_auc"], abs=1e-3)
    assert record["resampled"] == "patients" and record["n"] == len(pd.read_csv(baseline))
    assert "A - B =" in capsys.readouterr().out
