"""Inference: scores in dataset order, flip TTA, ensembles of checkpoints, summaries, predictions CSV."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from model_fixtures import TINY_WHOLE_SPEC, one_torch_thread, whole_image_set  # noqa: F401 (autouse fixture)

from mammo_fl.common.models.checkpoint import WHOLE_IMAGE_CLASSES, save_checkpoint
from mammo_fl.common.training.datasets import WholeImageDataset
from mammo_fl.common.utils.errors import ConfigError
from mammo_fl.common.evaluation.inference import (
    ensemble_scores,
    predict_proba,
    predict_scores,
    summarize_test_scores,
    write_predictions_csv,
)
from mammo_fl.common.models import build_model

CPU = torch.device("cpu")


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("whole_image", TINY_WHOLE_SPEC).eval()


def _save(path, model, mean=40.0, size=(64, 48)):
    save_checkpoint(path, model, kind="whole_image", model_spec=model.spec,
                    preprocessing={"height": size[0], "width": size[1], "mode": "paper", "mean": mean},
                    class_names=WHOLE_IMAGE_CLASSES)
    return path


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    images, cache = whole_image_set(tmp_path_factory.mktemp("eval"), n=6)
    return WholeImageDataset(images, cache, mean=40.0, augment=True, seed=1)  # augment must be ignored


def test_scores_are_in_dataset_order_and_tta_averages_four_flips(dataset) -> None:
    model = _model(0)
    plain = dataset.without_augmentation()
    x = torch.stack([plain[i][0] for i in range(len(plain))])
    with torch.no_grad():
        manual = torch.softmax(model(x), 1)[:, 1].numpy()
        flips = [x, x.flip(-1), x.flip(-2), x.flip(-2).flip(-1)]
        manual_tta = np.mean([torch.softmax(model(v), 1)[:, 1].numpy() for v in flips], axis=0)
    scores = predict_scores(model, dataset, CPU, batch_size=4)  # 2 batches: order across batches
    np.testing.assert_allclose(scores, manual, atol=1e-6)
    np.testing.assert_allclose(predict_scores(model, dataset, CPU, tta=True, batch_size=4), manual_tta, atol=1e-6)
    assert np.abs(manual - manual_tta).max() > 0  # the flips do change the prediction
    proba = predict_proba(model, dataset, CPU)
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-6)


def test_ensemble_is_the_mean_of_member_scores(tmp_path, dataset) -> None:
    a, b = _model(1), _model(2)
    pa, pb = _save(tmp_path / "a.pt", a), _save(tmp_path / "b.pt", b)
    expected = (predict_scores(a, dataset, CPU, tta=True) + predict_scores(b, dataset, CPU, tta=True)) / 2
    np.testing.assert_allclose(ensemble_scores([pa, pb], dataset, CPU, tta=True), expected, atol=1e-6)
    # a member trained on another cohort subtracts its own mean, not the dataset's
    pc = _save(tmp_path / "c.pt", b, mean=52.18)
    own = predict_scores(b, dataset.with_mean(52.18), CPU, tta=True)
    assert np.abs(own - predict_scores(b, dataset, CPU, tta=True)).max() > 1e-4  # the mean matters
    np.testing.assert_allclose(ensemble_scores([pa, pc], dataset, CPU, tta=True),
                               (predict_scores(a, dataset, CPU, tta=True) + own) / 2, atol=1e-6)
    assert dataset.mean == 40.0  # the caller's dataset is left as it was
    with pytest.raises(ConfigError, match="64x48"):
        ensemble_scores([_save(tmp_path / "d.pt", a, size=(128, 96))], dataset, CPU)
    patch = build_model("patch", {"arch": "resnet_tiny"})
    save_checkpoint(tmp_path / "p.pt", patch, kind="patch", model_spec=patch.spec,
                    preprocessing={"height": 64, "width": 48, "mode": "paper", "mean": 40.0},
                    class_names=["bg", "a", "b", "c", "d"])
    with pytest.raises(ConfigError, match="whole-image"):
        ensemble_scores([tmp_path / "p.pt"], dataset, CPU)


def test_summary_and_predictions_csv(tmp_path) -> None:
    y = np.array([0, 0, 1, 1, 0, 1])
    s = np.array([0.1, 0.4, 0.35, 0.8, 0.2, 0.9])
    summary = summarize_test_scores(y, s, threshold=0.5, n_boot=200)
    assert summary["auc"] == pytest.approx(8 / 9)
    assert summary["sensitivity"] == pytest.approx(2 / 3) and summary["specificity"] == 1.0
    lo, hi = summary["auc_ci"]
    assert lo <= summary["auc"] <= hi
    out = write_predictions_csv(tmp_path / "p.csv", [f"i{k}" for k in range(6)], s, y)
    table = pd.read_csv(out)
    assert list(table.columns) == ["image_id", "malignant_prob", "label"] and table["label"].tolist() == y.tolist()
    out2 = write_predictions_csv(tmp_path / "q.csv", ["a", "b"], [0.2, 0.3], [-1, -1])
    assert list(pd.read_csv(out2).columns) == ["image_id", "malignant_prob"]
