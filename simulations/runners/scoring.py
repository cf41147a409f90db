"""One evaluation for every method: the same model loading, data, scoring and AUC code.

Pooled, federated, single-site and unadapted models differ only in their weights; they
are all scored on the same fixed central validation set by `score_model`, so a gap
between methods cannot come from a difference in evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from mammo_fl.common.models.checkpoint import load_checkpoint
from mammo_fl.common.utils.errors import DataError


@dataclass
class ExperimentData:
    """What every runner shares: the source model, the image cache and the fixed validation set."""

    source_model: Path
    cache: object  # common.preprocess.ImageCache at the source model's geometry
    mean: float
    train_images: pd.DataFrame  # the training pool (all training patients)
    val_images: pd.DataFrame  # the fixed central validation set (30% of patients)
    device: torch.device
    tta: bool = False
    eval_batch_size: int = 8
    num_workers: int = 0


def load_model(path: Path, device: torch.device) -> nn.Module:
    """A whole-image model from a checkpoint (the source model or a federated final.pt)."""
    loaded = load_checkpoint(path, device=device)
    if loaded.kind != "whole_image":
        raise DataError(path, f"expected a whole-image checkpoint, got kind {loaded.kind!r}")
    return loaded.model


def predict_images(model: nn.Module, data: ExperimentData, images: pd.DataFrame) -> np.ndarray:
    """Malignant probabilities of `model` for `images` (rows of the validation set), in row order."""
    from mammo_fl.common.evaluation.inference import predict_scores
    from mammo_fl.common.training.datasets import WholeImageDataset

    dataset = WholeImageDataset(images, data.cache, mean=data.mean, augment=False)
    return predict_scores(model, dataset, data.device, tta=data.tta, batch_size=data.eval_batch_size)


def validation_auc(data: ExperimentData, scores: np.ndarray) -> float:
    """Per-image AUC of scores given in validation-set order (NaN when a model diverged)."""
    from mammo_fl.common.evaluation.metrics import auc

    if len(scores) != len(data.val_images):
        raise DataError(None, f"{len(scores)} scores for {len(data.val_images)} validation images")
    if not np.all(np.isfinite(scores)):
        return float("nan")
    return float(auc(data.val_images["label"].to_numpy().astype(int), scores))


def score_model(model: nn.Module, data: ExperimentData) -> tuple[float, np.ndarray]:
    """(per-image validation AUC, the scores in validation-set order) of `model` on the fixed validation set."""
    scores = predict_images(model, data, data.val_images)
    return validation_auc(data, scores), scores


def save_predictions(path: Path, data: ExperimentData, scores: np.ndarray) -> Path:
    """The arm's per-image validation scores (`mammo-train compare` format + patient_id, vendor), so two
    arms can be compared on the same images with a paired bootstrap."""
    val = data.val_images
    frame = pd.DataFrame({"image_id": val["image_id"].astype(str).values if "image_id" in val.columns
                          else val["image_path"].astype(str).values,
                          "patient_id": val["patient_id"].astype(str).values,
                          "label": val["label"].astype(int).values, "malignant_prob": np.asarray(scores, float)})
    if "vendor" in val.columns:
        frame["vendor"] = val["vendor"].astype(str).values
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    return path
