"""Two-step baseline: heatmap scan, regional features, random forest."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from model_fixtures import one_torch_thread  # noqa: F401 (autouse fixture: MAMMO_TEST_THREADS threads)

from mammo_fl.common.pipeline.baseline import (
    BaselineSettings,
    TwoStepBaseline,
    heatmap_features,
    patch_heatmap,
    region_features,
)
from mammo_fl.common.utils.errors import ConfigError
from mammo_fl.common.models import build_model


def test_region_features_measure_the_largest_region() -> None:
    prob = np.zeros((20, 16), np.float32)
    prob[2:4, 2:4] = 0.6  # small region, 4 px
    prob[10:13, 3:13] = 0.95  # largest region, 3 x 10 = 30 px, elongated along columns
    n, area, largest, major, mean, peak = region_features(prob, 0.5)
    assert n == 2
    assert area == pytest.approx(34 / 320) and largest == pytest.approx(30 / 320)
    assert mean == pytest.approx(0.95) and peak == pytest.approx(0.95)
    # major axis of a 10-long bar = 4 * std of its column coordinates, normalised by the diagonal
    cols = np.tile(np.arange(10), 3)
    assert major * np.hypot(20, 16) == pytest.approx(4 * np.std(cols, ddof=1), rel=1e-6)
    assert region_features(prob, 0.99) == [0.0] * 6


def test_heatmap_features_shape_and_cutoff_dependence() -> None:
    rng = np.random.default_rng(0)
    hm = rng.dirichlet(np.ones(5), size=(9, 7)).transpose(2, 0, 1).astype(np.float32)
    f = heatmap_features(hm)
    # 4 lesion maps + summed malignant map; each: 2 globals + 4 cutoffs x 6 regional features
    assert f.shape == (5 * (2 + 4 * 6),)
    assert heatmap_features(hm, cutoffs=(0.3,)).shape == (5 * (2 + 6),)
    sharp = hm.copy()
    sharp[4] = 0.0
    sharp[4, 4, 3] = 1.0  # one confident malignant-mass cell
    g = heatmap_features(sharp)
    assert g[3 * 26] == 1.0  # max of the malignant-mass map (4th lesion map)
    assert g[3 * 26 + 2 + 3 * 6] == 1.0  # one region still present at cutoff 0.9
    with pytest.raises(ValueError):
        heatmap_features(hm[0])


def test_heatmap_equals_patch_classifier_when_window_covers_the_map() -> None:
    torch.manual_seed(0)
    model = build_model("patch", {"arch": "resnet_tiny"}).eval()
    x = torch.randn(2, 3, 64, 64)  # 64 px at stride 32 -> 2x2 map; window 2 = the whole patch
    hm = patch_heatmap(model.trunk, model.fc, x, window=2)
    assert hm.shape == (2, 5, 1, 1)
    with torch.no_grad():
        direct = model(x).softmax(1)
    assert torch.allclose(hm[:, :, 0, 0], direct, atol=1e-5)
    big = patch_heatmap(model.trunk, model.fc, torch.randn(1, 3, 160, 128), window=2)
    assert big.shape == (1, 5, 4, 3) and torch.allclose(big.sum(1), torch.ones(1, 4, 3))


def _heatmaps(n: int, rng: np.random.Generator) -> tuple[list[np.ndarray], np.ndarray]:
    """Malignant images carry a blob of high malignant-mass probability; others noise only."""
    maps, labels = [], []
    for i in range(n):
        label = i % 2
        logits = rng.normal(0, 0.5, size=(5, 9, 7))
        logits[0] += 2.0
        if label:
            r, c = rng.integers(1, 7), rng.integers(1, 5)
            logits[4, r - 1 : r + 2, c - 1 : c + 2] += 5.0
        e = np.exp(logits)
        maps.append((e / e.sum(0)).astype(np.float32))
        labels.append(label)
    return maps, np.asarray(labels)


def test_random_forest_separates_informative_heatmaps() -> None:
    rng = np.random.default_rng(1)
    train_maps, train_y = _heatmaps(80, rng)
    test_maps, test_y = _heatmaps(40, rng)
    base = TwoStepBaseline(BaselineSettings(n_estimators=50, min_samples_split=0.16, seed=0)).fit(train_maps, train_y)
    scores = base.predict(test_maps)
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(test_y, scores) > 0.95
    # the paper's absolute min_samples_split (300) cannot split 80 images: a constant forest
    flat = TwoStepBaseline(BaselineSettings(n_estimators=10, min_samples_split=300)).fit(train_maps, train_y)
    assert np.ptp(flat.predict(test_maps)) == 0.0


def test_baseline_rejects_bad_settings_and_one_class() -> None:
    with pytest.raises(ConfigError):
        BaselineSettings(cutoffs=(0.0, 0.5))
    with pytest.raises(ConfigError):
        BaselineSettings(min_samples_split=1.5)
    maps, _ = _heatmaps(4, np.random.default_rng(0))
    with pytest.raises(ConfigError):
        TwoStepBaseline().fit(maps, np.zeros(4, int))
