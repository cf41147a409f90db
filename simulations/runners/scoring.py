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


def score_model(model: nn.Module, data: ExperimentData) -> float:
    """Per-image validation AUC of `model` on the fixed validation set."""
    from mammo_fl.common.training.datasets import WholeImageDataset
    from mammo_fl.common.evaluation.inference import predict_scores
    from mammo_fl.common.evaluation.metrics import auc

    dataset = WholeImageDataset(data.val_images, data.cache, mean=data.mean, augment=False)
    scores = predict_scores(model, dataset, data.device, tta=data.tta, batch_size=data.eval_batch_size)
    labels = data.val_images["label"].to_numpy().astype(int)
    if not np.all(np.isfinite(scores)):
        return float("nan")
    return float(auc(labels, scores))
