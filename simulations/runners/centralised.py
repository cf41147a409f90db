"""Non-federated arms: no fine-tuning, pooled (centralised) fine-tuning, each site alone.

All three are the same operation: start from the source model, fine-tune on a set of
images for `rounds x local_epochs` epochs (equal compute with the federated arm), score
on the fixed validation set.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pandas as pd

from mammo_fl.common.training.finetune_config import FineTuneConfig
from mammo_fl.common.utils.device import seed_everything
from mammo_fl.simulations.runners.scoring import ExperimentData, load_model, save_predictions, score_model
from mammo_fl.simulations.settings import FineTuneSettings


def finetune_config(ft: FineTuneSettings, seed: int) -> FineTuneConfig:
    """A single party's training: the sites' local settings over rounds x local epochs (equal compute)."""
    return dataclasses.replace(
        ft.local,
        epochs=ft.total_epochs,
        proximal_mu=0.0,  # a single party has no global model to stay close to
        seed=seed,
        max_steps=(ft.local.max_steps * ft.rounds) if ft.local.max_steps else None,
    )


def run_none(data: ExperimentData, predictions: Path | None = None) -> tuple[float, float]:
    """AUC of the source model as is; returns (auc, seconds). Scores go to `predictions` when given."""
    start = time.perf_counter()
    model = load_model(data.source_model, data.device)
    auc, scores = score_model(model, data)
    if predictions is not None:
        save_predictions(predictions, data, scores)
    return auc, time.perf_counter() - start


def run_finetuned(data: ExperimentData, images: pd.DataFrame, ft: FineTuneSettings, seed: int,
                  predictions: Path | None = None) -> tuple[float, float]:
    """Fine-tune the source model on `images` and score it; returns (auc, seconds)."""
    from mammo_fl.common.training.datasets import WholeImageDataset
    from mammo_fl.common.training.finetune import finetune

    start = time.perf_counter()
    seed_everything(seed)
    model = load_model(data.source_model, data.device)
    dataset = WholeImageDataset(images, data.cache, mean=data.mean, augment=ft.local.augment, seed=seed)
    finetune(model, dataset, finetune_config(ft, seed), data.device)
    auc, scores = score_model(model, data)
    if predictions is not None:
        save_predictions(predictions, data, scores)
    return auc, time.perf_counter() - start
