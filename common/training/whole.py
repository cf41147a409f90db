"""2-stage whole-image training (Shen et al. 2019, Methods: training of the whole-image classifier) with validation-AUC model selection and resume.

Stage 1 trains the new top layers (+ head) with the converted patch trunk frozen (lr 1e-4, weight
decay 1e-3, 30 epochs in the paper); stage 2 trains all layers (1e-5, 1e-2, 20 epochs). The
validation AUC is computed after every epoch; the best model is written as a self-describing
checkpoint (`best_path`) whenever it improves, and the latest state (weights + optimizer +
counters) to `state_path` after every epoch, so `resume=True` continues an interrupted run.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from mammo_fl.common.models.checkpoint import WHOLE_IMAGE_CLASSES, load_checkpoint, save_checkpoint
from mammo_fl.common.utils.errors import DataError
from mammo_fl.common.evaluation.inference import predict_scores
from mammo_fl.common.evaluation.metrics import auc
from mammo_fl.common.training.staged import Stage, StagedResult, TrainState, stages_from_config, train_staged

log = logging.getLogger(__name__)

WHOLE_STAGE_LAYOUT = {"stage1": "top", "stage2": "all"}


def whole_stages(section: dict[str, Any]) -> list[Stage]:
    """The [whole_train.stage1..2] tables of a preset as Stages."""
    return stages_from_config(section, WHOLE_STAGE_LAYOUT, "whole_train")


def validation_auc(model: nn.Module, dataset: Dataset, device: torch.device, batch_size: int = 8) -> float:
    """Per-image AUC of the malignant score on `dataset` (NaN when a class is missing)."""
    if dataset is None or len(dataset) == 0:
        return float("nan")
    scores = predict_scores(model, dataset, device, batch_size=batch_size)
    return auc(dataset.labels(), scores)


def train_whole_classifier(
    model: nn.Module,
    train_set: Dataset,
    val_set: Dataset | None,
    stages: list[Stage],
    device: torch.device,
    *,
    preprocessing: dict[str, Any],
    best_path: Path,
    state_path: Path,
    batch_size: int = 2,
    seed: int = 0,
    augment: bool = True,
    num_workers: int = 0,
    resume: bool = True,
    provenance: dict[str, Any] | None = None,
    max_epochs: int | None = None,
    progress: bool = False,
) -> StagedResult:
    """Train a WholeImageModel in place; the best-validation-AUC weights are left in the model.

    With `resume` and an existing `state_path` whose spec matches, training continues from it.
    """
    best_path, state_path = Path(best_path), Path(state_path)
    spec = model.spec
    state, best_state = None, None
    if resume and state_path.is_file():
        saved = load_checkpoint(state_path)
        if saved.model_spec != spec or saved.training_state is None:
            raise DataError(state_path, "resume state belongs to another model; delete it or use a new run dir")
        model.load_state_dict(saved.model.state_dict())
        state = TrainState.from_dict(saved.training_state)
        if best_path.is_file() and state.best_epoch >= 0:
            best_state = load_checkpoint(best_path).model.state_dict()
        log.info("resuming whole-image training at epoch %d (best val AUC %.4f)", state.global_epoch + 1,
                 state.best_metric)

    def validate(m: nn.Module) -> float:
        return validation_auc(m, val_set, device)

    def on_epoch(m: nn.Module, st: TrainState, improved: bool) -> None:
        common = dict(kind="whole_image", model_spec=spec, preprocessing=preprocessing,
                      class_names=WHOLE_IMAGE_CLASSES, provenance=provenance)
        if improved:
            save_checkpoint(best_path, m, **common,
                            metrics={"val_auc": st.best_metric, "epoch": st.best_epoch + 1})
        save_checkpoint(state_path, m, **common, training_state=st.to_dict())

    result = train_staged(model, train_set, stages, validate, device, batch_size=batch_size, seed=seed,
                          augment=augment, num_workers=num_workers, state=state, best_state=best_state,
                          on_epoch=on_epoch, max_epochs=max_epochs, progress=progress, name="whole")
    return result
