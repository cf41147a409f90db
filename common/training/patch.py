"""3-stage patch-classifier training (Shen et al. 2019, Methods: training of the patch classifier): last layer, top layers, all layers.

Adam, batch 32, per-batch class-balancing sample weights, augmentation on the fly; model
selection on validation patch accuracy (patches of validation patients), best over all stages.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from mammo_fl.common.evaluation.inference import predict_proba
from mammo_fl.common.training.staged import Stage, StagedResult, TrainState, stages_from_config, train_staged

# stage key in the preset -> modules trained (common.training.loops stage names)
PATCH_STAGE_LAYOUT = {"stage1": "head", "stage2": "top", "stage3": "all"}


def patch_stages(section: dict[str, Any]) -> list[Stage]:
    """The [patch_train.stage1..3] tables of a preset as Stages."""
    return stages_from_config(section, PATCH_STAGE_LAYOUT, "patch_train")


def patch_accuracy(model: nn.Module, dataset: Dataset, device: torch.device, batch_size: int = 64) -> float:
    """Fraction of patches whose arg-max class is right (NaN for an empty set)."""
    if len(dataset) == 0:
        return float("nan")
    proba = predict_proba(model, dataset, device, batch_size=batch_size)
    labels = dataset.labels() if hasattr(dataset, "labels") else np.array([int(dataset[i][1]) for i in range(len(dataset))])
    return float((proba.argmax(axis=1) == labels).mean())


def train_patch_classifier(
    model: nn.Module,
    train_set: Dataset,
    val_set: Dataset | None,
    stages: list[Stage],
    device: torch.device,
    *,
    batch_size: int = 32,
    seed: int = 0,
    augment: bool = True,
    num_workers: int = 0,
    progress: bool = False,
    on_epoch: Callable[[nn.Module, TrainState, bool], None] | None = None,
    state: TrainState | None = None,
    best_state: dict[str, torch.Tensor] | None = None,
    max_epochs: int | None = None,
) -> StagedResult:
    """Train a PatchModel in place; the best-validation-accuracy weights are left in the model.

    Without validation patches the last epoch is kept (metric NaN).
    """
    has_val = val_set is not None and len(val_set) > 0

    def validate(m: nn.Module) -> float:
        return patch_accuracy(m, val_set, device) if has_val else float("nan")

    return train_staged(model, train_set, stages, validate, device, batch_size=batch_size, seed=seed,
                        augment=augment, num_workers=num_workers, state=state, best_state=best_state,
                        on_epoch=on_epoch, max_epochs=max_epochs, progress=progress, name="patch")
