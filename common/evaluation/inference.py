"""Inference: malignant scores (softmax column 1), flip TTA (the paper's A-AUC), checkpoint ensembles,
summary metrics and the predictions CSV."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from mammo_fl.common.training.augment import flip_views
from mammo_fl.common.models.checkpoint import LoadedCheckpoint, load_checkpoint
from mammo_fl.common.training.datasets import UNLABELLED, split_augmentation
from mammo_fl.common.utils.atomic import atomic_path
from mammo_fl.common.utils.device import autocast
from mammo_fl.common.utils.errors import ConfigError
from mammo_fl.common.evaluation.metrics import auc, bootstrap_auc_ci, sens_spec_at


@torch.no_grad()
def predict_proba(model: nn.Module, dataset: Dataset, device: torch.device | str, tta: bool = False,
                  batch_size: int = 8, num_workers: int = 0, progress: bool = False) -> np.ndarray:
    """Softmax probabilities [N, classes] in dataset order; with `tta`, the mean over the 4 flip views."""
    device = torch.device(device)
    plain, _ = split_augmentation(dataset)  # never augment randomly at inference
    loader = DataLoader(plain, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=device.type == "cuda")
    was_training = model.training
    model.to(device).eval()
    out = []
    for x, _ in tqdm(loader, desc="predict", leave=False, disable=not progress, unit="batch"):
        x = x.to(device, non_blocking=True)
        views = flip_views(x) if tta else [x]
        probs = 0.0
        for v in views:
            with autocast(device):
                logits = model(v)
            probs = probs + torch.softmax(logits.float(), dim=1)
        out.append((probs / len(views)).cpu().numpy())
    model.train(was_training)
    if not out:
        return np.zeros((0, 0), dtype=np.float64)
    return np.concatenate(out).astype(np.float64)


def predict_scores(model: nn.Module, dataset: Dataset, device: torch.device | str, tta: bool = False,
                   batch_size: int = 8, num_workers: int = 0, progress: bool = False) -> np.ndarray:
    """Malignant probabilities (softmax column 1) in dataset order."""
    proba = predict_proba(model, dataset, device, tta=tta, batch_size=batch_size, num_workers=num_workers,
                          progress=progress)
    return proba[:, 1] if proba.size else np.zeros(0, dtype=np.float64)


def check_preprocessing(preprocessing: dict[str, Any], dataset: Dataset, source: str = "checkpoint") -> None:
    """The dataset must feed the model what it was trained on (image size and mean)."""
    mean = getattr(dataset, "mean", None)
    if mean is not None and abs(float(preprocessing.get("mean", mean)) - float(mean)) > 1e-6:
        raise ConfigError(f"{source} expects mean {preprocessing.get('mean')}, the dataset uses {mean}")
    size = getattr(dataset, "image_size", None)
    if size is not None and "height" in preprocessing:
        want = (int(preprocessing["height"]), int(preprocessing["width"]))
        if tuple(size) != want:
            raise ConfigError(f"{source} expects images {want[0]}x{want[1]}, the dataset has {size[0]}x{size[1]}")


def _with_model_mean(dataset: Dataset, preprocessing: dict[str, Any]) -> Dataset:
    if "mean" in preprocessing and hasattr(dataset, "with_mean"):
        return dataset.with_mean(float(preprocessing["mean"]))
    return dataset


def ensemble_scores(checkpoints: Sequence[str | Path | LoadedCheckpoint], dataset: Dataset,
                    device: torch.device | str, tta: bool = True, batch_size: int = 8,
                    progress: bool = False) -> np.ndarray:
    """Average of the members' (TTA) malignant scores (the paper's ensemble of 4 whole-image models).

    Each member sees the images with its own preprocessing mean (members trained on different cohorts
    subtract different means); the image size must match every member."""
    if not checkpoints:
        raise ConfigError("an ensemble needs at least one checkpoint")
    total = None
    for item in checkpoints:
        ckpt = item if isinstance(item, LoadedCheckpoint) else load_checkpoint(item, device)
        if ckpt.kind != "whole_image":
            raise ConfigError(f"ensemble members must be whole-image checkpoints, got {ckpt.kind!r}")
        member_set = _with_model_mean(dataset, ckpt.preprocessing)
        check_preprocessing(ckpt.preprocessing, member_set, source=str(item) if not isinstance(item, LoadedCheckpoint)
                            else "checkpoint")
        scores = predict_scores(ckpt.model, member_set, device, tta=tta, batch_size=batch_size, progress=progress)
        total = scores if total is None else total + scores
    return total / len(checkpoints)


def summarize_test_scores(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray,
                          threshold: float = 0.5, groups: Sequence | None = None, n_boot: int = 2000,
                          seed: int = 0) -> dict[str, Any]:
    """Per-image scores of a labelled split -> AUC, bootstrap 95% CI (resampling `groups`, e.g. patients,
    when given), sensitivity/specificity at `threshold`, counts."""
    y = np.asarray(labels)
    s = np.asarray(scores)
    lo, hi = bootstrap_auc_ci(y, s, n=n_boot, seed=seed, groups=groups)
    sens, spec = sens_spec_at(y, s, threshold)
    return {"auc": auc(y, s), "auc_ci": [lo, hi], "threshold": float(threshold), "sensitivity": sens,
            "specificity": spec, "n": int(y.size), "n_pos": int((y == 1).sum())}


def write_predictions_csv(path: str | Path, image_ids: Sequence[str], scores: Sequence[float] | np.ndarray,
                          labels: Sequence[int] | np.ndarray | None = None,
                          tta_scores: Sequence[float] | np.ndarray | None = None,
                          threshold: float | None = None) -> Path:
    """`image_id, malignant_prob[, malignant_prob_tta][, recall][, label]`, 6 decimals, written atomically
    (label column only when every label is known; the TTA column when `tta_scores` are given; with a
    `threshold`, `recall` is 1 where malignant_prob >= threshold, the operating point's rule)."""
    table = pd.DataFrame({"image_id": list(image_ids), "malignant_prob": np.asarray(scores, dtype=float)})
    if tta_scores is not None:
        table["malignant_prob_tta"] = np.asarray(tta_scores, dtype=float)
    if threshold is not None:
        table["recall"] = (table["malignant_prob"].to_numpy() >= threshold).astype(int)
    if labels is not None:
        lab = np.asarray(labels)
        if lab.size and (lab != UNLABELLED).all():
            table["label"] = lab.astype(int)
    path = Path(path)
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False, float_format="%.6f")
    return path
