"""`mammo-train predict` applies the operating point a checkpoint carries (a federated final.pt) as a 0/1
`recall` column; `--threshold` overrides it; a checkpoint without one gives no recall column."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from data_fixtures import breast_phantom, write_dicom
from federation_support import PREPROCESSING, TINY_SPEC

from mammo_fl.common.cli.train import main as train_main
from mammo_fl.common.models import build_model
from mammo_fl.common.models.checkpoint import save_checkpoint


def _checkpoint(path: Path, metrics: dict | None = None) -> Path:
    torch.manual_seed(0)
    save_checkpoint(path, build_model("whole_image", TINY_SPEC), kind="whole_image", model_spec=TINY_SPEC,
                    preprocessing=PREPROCESSING, class_names=["not_malignant", "malignant"], metrics=metrics)
    return path


@pytest.fixture(scope="module")
def dicoms(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("predict_dicoms")
    for i in range(5):
        write_dicom(folder / f"img{i}.dcm", breast_phantom(256, 208, chest_wall=("left", "right")[i % 2], seed=i))
    return folder


def _predict(model: Path, dicoms: Path, out: Path, *extra: str) -> pd.DataFrame:
    assert train_main(["predict", "--model", str(model), str(dicoms), "--out", str(out), "--quiet",
                       "--workers", "1", "--cache", str(out.parent / "cache"), *extra]) == 0
    return pd.read_csv(out)


def test_predict_uses_the_checkpoint_threshold_and_the_override(dicoms, tmp_path, capsys):
    plain = _predict(_checkpoint(tmp_path / "plain.pt"), dicoms, tmp_path / "plain.csv")
    assert "recall" not in plain.columns  # no operating point, no recall column
    threshold = float(np.median(plain["malignant_prob"]))
    point = {"threshold": threshold, "target": {"kind": "specificity", "value": 0.9}, "sens": 0.8, "spec": 0.9,
             "round": 5, "tta": False}
    final = _checkpoint(tmp_path / "final.pt", {"operating_point": point})
    got = _predict(final, dicoms, tmp_path / "op.csv")
    assert list(got.columns) == ["image_id", "malignant_prob", "recall"]
    expected = (plain.set_index("image_id")["malignant_prob"] >= threshold).astype(int)
    assert (got.set_index("image_id")["recall"] == expected.loc[got["image_id"]].to_numpy()).all()
    assert 0 < got["recall"].sum() < len(got)  # the median splits the images
    assert f"threshold {threshold:.4f}" in capsys.readouterr().out
    forced = _predict(final, dicoms, tmp_path / "forced.csv", "--threshold", "0")
    assert forced["recall"].tolist() == [1] * len(forced)


def test_a_bad_threshold_is_a_one_line_error(dicoms, tmp_path, capsys):
    assert train_main(["predict", "--model", str(tmp_path / "x.pt"), str(dicoms), "--out", str(tmp_path / "p.csv"),
                       "--threshold", "1.5"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.endswith("error: --threshold must be in [0, 1], got 1.5")
