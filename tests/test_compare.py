"""Paired AUC comparison of two models on one test set (common.metrics / common.compare)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mammo_fl.common.cli.train import main as train_main
from mammo_fl.common.pipeline.compare import compare_predictions
from mammo_fl.common.utils.errors import MammoError
from mammo_fl.common.evaluation.metrics import auc, bootstrap_auc_ci, paired_auc_difference


def _scores(seed: int, n: int = 200, separation: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % 2).astype(int)
    return y, rng.normal(size=n) + separation * y


def test_identical_models_differ_by_exactly_zero() -> None:
    y, s = _scores(0)
    r = paired_auc_difference(y, s, s.copy(), n=300, seed=1)
    assert r.difference == 0.0 and r.ci == (0.0, 0.0) and r.share_a_better == 0.5
    assert r.auc_a == pytest.approx(auc(y, s)) and r.n == 200 and r.n_pos == 100


def test_better_model_has_a_ci_above_zero_and_pairing_tightens_it() -> None:
    y, s = _scores(0, separation=0.6)
    rng = np.random.default_rng(5)
    better = s + 0.25 * y + 0.2 * rng.normal(size=y.size)  # shares b's noise, plus more signal
    r = paired_auc_difference(y, better, s, n=500, seed=2)
    assert r.difference == pytest.approx(auc(y, better) - auc(y, s))
    assert 0 < r.ci[0] < r.difference < r.ci[1] and r.share_a_better > 0.97
    # the two separate CIs overlap although the paired one excludes zero: that is why pairing matters
    lo_a, _ = bootstrap_auc_ci(y, better, n=500, seed=2)
    _, hi_b = bootstrap_auc_ci(y, s, n=500, seed=2)
    assert lo_a < hi_b
    flipped = paired_auc_difference(y, s, better, n=500, seed=2)
    assert flipped.difference == pytest.approx(-r.difference) and flipped.share_a_better < 0.03


def test_patient_groups_resample_whole_patients() -> None:
    y, a = _scores(1, n=120)
    _, b = _scores(2, n=120)
    groups = np.repeat(np.arange(30), 4)
    r = paired_auc_difference(y, a, b, n=200, seed=0, groups=groups)
    assert r.ci[0] <= r.difference <= r.ci[1]
    with pytest.raises(MammoError, match="differ in length"):
        paired_auc_difference(y, a, b, n=10, groups=groups[:-1])
    with pytest.raises(MammoError, match="both benign and malignant"):
        paired_auc_difference(np.ones(5, int), a[:5], b[:5])


def _write(path: Path, ids: list[str], probs: np.ndarray, labels: np.ndarray) -> Path:
    pd.DataFrame({"image_id": ids, "malignant_prob": probs, "label": labels}).to_csv(path, index=False)
    return path


def test_compare_aligns_files_by_image_id(tmp_path: Path) -> None:
    y, s = _scores(3, n=60)
    ids = [f"img{i:03d}" for i in range(60)]
    a = _write(tmp_path / "a.csv", ids, s, y)
    order = np.random.default_rng(0).permutation(60)  # same images, another row order
    b = _write(tmp_path / "b.csv", [ids[i] for i in order], s[order], y[order])
    r = compare_predictions(a, b, n=100)
    assert r.difference == 0.0 and r.n == 60


def test_compare_rejects_mismatched_files(tmp_path: Path, capsys) -> None:
    y, s = _scores(3, n=20)
    ids = [f"img{i:03d}" for i in range(20)]
    a = _write(tmp_path / "a.csv", ids, s, y)
    fewer = _write(tmp_path / "fewer.csv", ids[:-1], s[:-1], y[:-1])
    relabelled = _write(tmp_path / "relabelled.csv", ids, s, 1 - y)
    (tmp_path / "nolabel.csv").write_text("image_id,malignant_prob\nimg000,0.5\n")
    (tmp_path / "blank.csv").write_text("image_id,malignant_prob,label\nimg000,0.5,\n")
    cases = {str(fewer): "only in the first", str(relabelled): "label of image", str(tmp_path / "nolabel.csv"):
             "missing column", str(tmp_path / "blank.csv"): "no label", str(tmp_path / "absent.csv"): "not found"}
    for other, message in cases.items():
        assert train_main(["compare", str(a), other]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert train_main(["compare", str(a), str(a), "--bootstrap", "0"]) == 2
    assert "at least one resample" in capsys.readouterr().err
