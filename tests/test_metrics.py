"""Metrics against scikit-learn: AUC, bootstrap CI, histograms (federated pooled AUC), ROC, sens/spec."""

from __future__ import annotations

import numpy as np
import pytest
from model_fixtures import one_torch_thread  # noqa: F401 (autouse fixture)
from PIL import Image
from sklearn.metrics import roc_auc_score

from mammo_fl.common.utils.errors import MammoError
from mammo_fl.common.evaluation.metrics import (
    auc,
    auc_from_histograms,
    bootstrap_auc_ci,
    plot_roc,
    roc_curve,
    roc_from_histograms,
    score_histograms,
    sens_spec_at,
    sens_spec_from_histograms,
    threshold_at_sensitivity,
)


def _data(n: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    s = 1 / (1 + np.exp(-(rng.normal(size=n) + 1.2 * y)))
    return y, s


def test_auc_matches_sklearn_with_ties() -> None:
    y, s = _data()
    assert auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    s_tied = np.round(s, 1)  # many ties
    assert auc(y, s_tied) == pytest.approx(roc_auc_score(y, s_tied), abs=1e-12)
    assert np.isnan(auc([1, 1, 1], [0.1, 0.2, 0.3]))
    with pytest.raises(MammoError, match="NaN"):
        auc([0, 1], [0.1, np.nan])
    with pytest.raises(MammoError, match="length"):
        auc([0, 1, 1], [0.1, 0.2])


def test_bootstrap_ci_matches_sklearn_resampling() -> None:
    y, s = _data(120)
    lo, hi = bootstrap_auc_ci(y, s, n=300, seed=3)
    # independent re-computation with the same resampling stream
    rng = np.random.default_rng(3)
    vals = []
    for start in range(0, 300, 256):
        for idx in rng.integers(0, y.size, size=(min(256, 300 - start), y.size)):
            if len(np.unique(y[idx])) == 2:
                vals.append(roc_auc_score(y[idx], s[idx]))
    assert lo == pytest.approx(np.quantile(vals, 0.025), abs=1e-12)
    assert hi == pytest.approx(np.quantile(vals, 0.975), abs=1e-12)
    assert lo < auc(y, s) < hi
    # bigger sample -> narrower interval
    y2, s2 = _data(1200)
    lo2, hi2 = bootstrap_auc_ci(y2, s2, n=300, seed=3)
    assert hi2 - lo2 < hi - lo


def test_grouped_bootstrap_keeps_groups_together() -> None:
    y, s = _data(60, seed=5)
    # duplicating every image inside its own group must give the same CI as the plain bootstrap
    # of the distinct images when each group is one image
    groups = np.arange(60)
    lo_g, hi_g = bootstrap_auc_ci(y, s, n=200, seed=1, groups=groups)
    assert 0.0 <= lo_g < hi_g <= 1.0
    yy, ss, gg = np.repeat(y, 2), np.repeat(s, 2), np.repeat(groups, 2)
    lo_d, hi_d = bootstrap_auc_ci(yy, ss, n=200, seed=1, groups=gg)
    assert (lo_d, hi_d) == pytest.approx((lo_g, hi_g), abs=1e-12)


def test_histogram_auc_equals_concatenated_auc_up_to_bin_resolution() -> None:
    sites = [_data(150, seed=k) for k in range(3)]
    bins = 1000
    neg = np.zeros(bins, dtype=np.int64)
    pos = np.zeros(bins, dtype=np.int64)
    for y, s in sites:
        n_, p_ = score_histograms(y, s, bins)
        neg += n_
        pos += p_
    y_all = np.concatenate([y for y, _ in sites])
    s_all = np.concatenate([s for _, s in sites])
    assert neg.sum() + pos.sum() == y_all.size
    # exact when scores are quantised to the bins (ties inside a bin count 1/2 on both sides)
    q = (np.minimum((s_all * bins).astype(int), bins - 1) + 0.5) / bins
    assert auc_from_histograms(neg, pos) == pytest.approx(roc_auc_score(y_all, q), abs=1e-12)
    # and within bin resolution of the continuous-score AUC
    assert abs(auc_from_histograms(neg, pos) - roc_auc_score(y_all, s_all)) < 2e-3
    # ROC area from histogram points (trapezoid) equals the histogram AUC
    curve = roc_from_histograms(neg, pos)
    assert np.trapezoid(curve.tpr, curve.fpr) == pytest.approx(curve.auc, abs=1e-12)
    assert curve.fpr[0] == 0 and curve.tpr[-1] == 1 and curve.fpr[-1] == 1


def test_histograms_reject_non_probabilities_and_edge_bins() -> None:
    n_, p_ = score_histograms([0, 1, 1], [0.0, 1.0, 0.9995], bins=1000)
    assert n_[0] == 1 and p_[999] == 2
    with pytest.raises(MammoError, match=r"\[0, 1\]"):
        score_histograms([0, 1], [0.2, 1.5])
    assert np.isnan(auc_from_histograms(np.zeros(10), np.ones(10)))


def test_sens_spec_and_operating_points() -> None:
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    s = np.array([0.1, 0.2, 0.6, 0.3, 0.4, 0.7, 0.8, 0.9])
    assert sens_spec_at(y, s, 0.5) == (0.75, 0.75)
    assert sens_spec_at(y, s, 0.0) == (1.0, 0.0)
    thr = threshold_at_sensitivity(y, s, 1.0)
    assert thr == 0.4 and sens_spec_at(y, s, thr)[0] == 1.0
    n_, p_ = score_histograms(y, s, 100)
    assert sens_spec_from_histograms(n_, p_, 0.5) == (0.75, 0.75)


def test_plot_roc_writes_png(tmp_path) -> None:
    y, s = _data(80)
    curve = roc_curve(y, s)
    assert curve.auc == pytest.approx(roc_auc_score(y, s))
    out = plot_roc(tmp_path / "sub" / "roc.png", {"model": curve}, operating_points={"t=0.5": (0.2, 0.8)})
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] > 100
