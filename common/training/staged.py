"""Staged training engine shared by the patch (3-stage) and whole-image (2-stage) schedules.

Each stage unfreezes a set of modules (`common.training.loops.set_trainable`) and trains them
with a fresh Adam optimizer at its own learning rate / weight decay (constant, or cosine-decayed
per epoch to `lr_final`). After every epoch a
validation metric is computed; the best weights (over all stages) are kept and restored at the
end (model selection). Every epoch reseeds the shuffling and augmentation from (seed, epoch), so
a run resumed from its saved state continues exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from mammo_fl.common.training.augment import AugmentSettings, BatchAugmenter
from mammo_fl.common.training.datasets import preload_if_small, split_augmentation
from mammo_fl.common.utils.device import make_grad_scaler, seed_everything
from mammo_fl.common.utils.errors import ConfigError, MammoError
from mammo_fl.common.training.loops import make_loader, needs_drop_last, run_epoch, set_trainable, trainable_parameters

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage:
    """One training stage: which modules train (`loops` stage name), for how long, how fast."""

    trainable: str
    epochs: int
    lr: float
    weight_decay: float = 0.0
    lr_final: float | None = None  # cosine decay per epoch from lr to lr_final (None = constant lr)
    keep_bn_statistics: bool = False  # BatchNorm layers use (and keep) their running statistics

    def __post_init__(self) -> None:
        if self.epochs < 0 or not self.lr > 0 or self.weight_decay < 0:
            raise ConfigError(f"bad training stage {self}: need epochs >= 0, lr > 0, weight_decay >= 0")
        if self.lr_final is not None and not 0 < self.lr_final <= self.lr:
            raise ConfigError(f"bad training stage {self}: need 0 < lr_final <= lr")

    def lr_at(self, epoch_in_stage: int) -> float:
        """Learning rate of one epoch: cosine from lr (first epoch) to lr_final (last epoch).

        Per epoch, not per step, so that a resumed run recomputes it from the epoch counter alone.
        """
        if self.lr_final is None or self.epochs <= 1:
            return self.lr
        progress = min(epoch_in_stage, self.epochs - 1) / (self.epochs - 1)
        return self.lr_final + (self.lr - self.lr_final) * 0.5 * (1.0 + math.cos(math.pi * progress))


def stages_from_config(section: dict[str, Any], layout: dict[str, str], where: str) -> list[Stage]:
    """`{"stage1": {"epochs", "lr", "weight_decay"[, "lr_final"]}, ...}` -> Stages; `layout` maps stage key -> trainable set."""
    stages = []
    for key, trainable in layout.items():
        values = section.get(key)
        if not isinstance(values, dict):
            raise ConfigError(f"{where}.{key} is missing (needs epochs, lr, weight_decay)")
        unknown = set(values) - {"epochs", "lr", "weight_decay", "lr_final", "keep_bn_statistics"}
        if unknown:
            raise ConfigError(f"unknown key(s) in {where}.{key}: {', '.join(sorted(unknown))}")
        try:
            lr_final = values.get("lr_final")
            stages.append(Stage(trainable, int(values["epochs"]), float(values["lr"]),
                                float(values.get("weight_decay", 0.0)),
                                None if lr_final is None else float(lr_final),
                                bool(values.get("keep_bn_statistics", False))))
        except KeyError as exc:
            raise ConfigError(f"{where}.{key} lacks {exc.args[0]!r}") from None
    return stages


@dataclass
class TrainState:
    """Where a staged run stands; plain types + tensors (saved inside checkpoints, weights_only)."""

    stage_index: int = 0
    epoch_in_stage: int = 0
    global_epoch: int = 0
    best_metric: float = math.nan  # NaN until a validation metric is available
    best_epoch: int = -1
    history: list[dict[str, Any]] = field(default_factory=list)
    optimizer: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"stage_index": self.stage_index, "epoch_in_stage": self.epoch_in_stage,
                "global_epoch": self.global_epoch, "best_metric": self.best_metric, "best_epoch": self.best_epoch,
                "history": self.history, "optimizer": self.optimizer}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainState:
        return cls(**{k: data[k] for k in ("stage_index", "epoch_in_stage", "global_epoch", "best_metric",
                                            "best_epoch", "history", "optimizer") if k in data})


@dataclass
class StagedResult:
    best_metric: float
    best_epoch: int
    history: list[dict[str, Any]]
    seconds: float
    finished: bool  # False when stopped by max_epochs (resume later)


def train_staged(
    model: nn.Module,
    train_set: Dataset,
    stages: list[Stage],
    validate: Callable[[nn.Module], float],
    device: torch.device,
    *,
    batch_size: int,
    seed: int = 0,
    augment: bool = True,
    num_workers: int = 0,
    class_balance: bool = True,
    state: TrainState | None = None,
    best_state: dict[str, torch.Tensor] | None = None,
    on_epoch: Callable[[nn.Module, TrainState, bool], None] | None = None,
    max_epochs: int | None = None,
    preload_max_mb: float = 2048.0,
    progress: bool = False,
    name: str = "train",
) -> StagedResult:
    """Run `stages` (resuming from `state` when given) and leave the best weights in `model`.

    `validate(model) -> metric` (higher is better; NaN counts as worse than anything).
    `on_epoch(model, state, improved)` is called after each epoch (checkpointing).
    `best_state` = the weights of the best epoch so far, when resuming.
    """
    if len(train_set) == 0:
        raise MammoError(f"{name}: the training set is empty")
    start = time.perf_counter()
    state = state or TrainState()
    model.to(device)
    plain, augmenter = split_augmentation(train_set, seed=seed)
    if augment and augmenter is None:
        augmenter = BatchAugmenter(seed, getattr(train_set, "augment_settings", AugmentSettings()))
    if not augment:
        augmenter = None
    preload_if_small(plain, preload_max_mb)
    drop_last = needs_drop_last(model, len(plain), batch_size)
    scaler = make_grad_scaler(device)
    done_now = 0
    total_epochs = sum(s.epochs for s in stages)
    while state.stage_index < len(stages):
        stage = stages[state.stage_index]
        if state.epoch_in_stage >= stage.epochs:
            state.stage_index += 1
            state.epoch_in_stage = 0
            state.optimizer = None
            continue
        if set_trainable(model, stage.trainable) == 0:
            raise MammoError(f"{name}: stage {state.stage_index + 1} ({stage.trainable}) has no trainable parameters")
        optimizer = torch.optim.Adam(trainable_parameters(model), lr=stage.lr, weight_decay=stage.weight_decay)
        if state.optimizer is not None:
            optimizer.load_state_dict(state.optimizer)
        while state.epoch_in_stage < stage.epochs:
            if max_epochs is not None and done_now >= max_epochs:
                return StagedResult(state.best_metric, state.best_epoch, state.history,
                                    time.perf_counter() - start, finished=False)
            lr = stage.lr_at(state.epoch_in_stage)
            for group in optimizer.param_groups:
                group["lr"] = lr
            epoch_seed = seed * 100_003 + state.global_epoch
            seed_everything(epoch_seed)
            if augmenter is not None:
                augmenter.generator.manual_seed(epoch_seed)
            loader = make_loader(plain, batch_size, shuffle=True, seed=epoch_seed, num_workers=num_workers,
                                 device=device, drop_last=drop_last)
            desc = f"{name} s{state.stage_index + 1} e{state.global_epoch + 1}/{total_epochs}"
            stats = run_epoch(model, loader, optimizer, device, scaler=scaler, augmenter=augmenter,
                              class_balance=class_balance, progress=progress, desc=desc,
                              keep_bn_statistics=stage.keep_bn_statistics)
            metric = float(validate(model))
            if math.isnan(metric):  # no usable validation (yet): follow the latest epoch
                improved = math.isnan(state.best_metric)
            else:
                improved = math.isnan(state.best_metric) or metric > state.best_metric
            if improved:
                state.best_metric = metric
                state.best_epoch = state.global_epoch
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            record = {"stage": state.stage_index + 1, "epoch": state.global_epoch + 1, "lr": lr,
                      "train_loss": stats.loss, "metric": metric, "seconds": round(stats.seconds, 2),
                      "examples_per_s": round(stats.examples / stats.seconds, 1) if stats.seconds else None}
            state.history.append(record)
            log.info("%s stage %d epoch %d: loss %.4f, val %.4f%s (%.1fs)", name, record["stage"], record["epoch"],
                     stats.loss, metric, " *" if improved else "", stats.seconds)
            state.epoch_in_stage += 1
            state.global_epoch += 1
            state.optimizer = copy.deepcopy(optimizer.state_dict())
            done_now += 1
            if on_epoch is not None:
                on_epoch(model, state, improved)
        state.stage_index += 1
        state.epoch_in_stage = 0
        state.optimizer = None
    if best_state is not None:
        model.load_state_dict(best_state)
    for p in model.parameters():
        p.requires_grad_(True)
    model.eval()
    return StagedResult(state.best_metric, state.best_epoch, state.history, time.perf_counter() - start, True)
