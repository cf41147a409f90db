"""Local fine-tuning of a whole-image model (federated sites, pooled baselines, INbreast transfer).

Adam with coupled weight decay (= the paper's L2 regulariser: L2 lambda on the loss is weight_decay
2*lambda), class-balanced per-batch sample weights, optional FedProx proximal term, AMP on CUDA,
augmentation on whole batches on the training device.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from mammo_fl.common.training.augment import AugmentSettings, BatchAugmenter
from mammo_fl.common.training.datasets import preload_if_small, split_augmentation
from mammo_fl.common.training.finetune_config import FineTuneConfig
from mammo_fl.common.utils.device import make_grad_scaler, seed_everything
from mammo_fl.common.utils.errors import MammoError
from mammo_fl.common.training.loops import ProximalTerm, make_loader, needs_drop_last, run_epoch, trainable_parameters


def finetune(model: nn.Module, dataset: Dataset, cfg: FineTuneConfig, device: torch.device | str,
             reference_state: dict[str, torch.Tensor] | None = None, progress: bool = False,
             optimizer_state: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train the model's trainable parameters in place; returns num_examples, train_loss, seconds, steps
    and optimizer_state (what `optimizer_state` takes next time: Adam's moments and step count).

    With `cfg.proximal_mu > 0`, adds mu/2 * ||w - w_ref||^2 over trainable params (FedProx); the
    reference defaults to the weights at the start of this call. `optimizer_state` from an earlier call
    continues that Adam (at this call's lr and weight decay) when it was for the same trainable
    parameters; otherwise Adam starts afresh.
    """
    cfg.validate()
    device = torch.device(device)
    start = time.perf_counter()
    seed_everything(cfg.seed)
    n = len(dataset)
    if n == 0:
        raise MammoError("fine-tuning dataset is empty")
    model.to(device)
    params = trainable_parameters(model)
    if not params:
        raise MammoError("the model has no trainable parameters")
    plain, augmenter = split_augmentation(dataset, seed=cfg.seed)
    if not cfg.augment:
        augmenter = None
    elif augmenter is None and not getattr(dataset, "augment", False):
        augmenter = BatchAugmenter(cfg.seed, AugmentSettings())  # foreign dataset: grey-ness detected per batch
    preload_if_small(plain, cfg.preload_max_mb)
    proximal = None
    if cfg.proximal_mu > 0:
        ref = reference_state if reference_state is not None else {k: v.detach().clone()
                                                                  for k, v in model.named_parameters()}
        proximal = ProximalTerm(model, ref, cfg.proximal_mu)
    optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    names = trainable_names(model)
    resume_optimizer(optimizer, optimizer_state, names, cfg)
    warmup = warmup_schedule(optimizer, cfg.warmup_steps)
    scaler = make_grad_scaler(device)
    loader = make_loader(plain, cfg.batch_size, shuffle=True, seed=cfg.seed, num_workers=cfg.num_workers,
                         device=device, drop_last=needs_drop_last(model, n, cfg.batch_size))
    total, seen, steps = 0.0, 0, 0
    for epoch in range(cfg.epochs):
        left = None if cfg.max_steps is None else cfg.max_steps - steps
        if left is not None and left <= 0:
            break
        stats = run_epoch(model, loader, optimizer, device, scaler=scaler, augmenter=augmenter,
                          class_balance=cfg.class_balance, proximal=proximal, max_steps=left, progress=progress,
                          keep_bn_statistics=cfg.keep_bn_statistics, scheduler=warmup,
                          desc=f"fine-tune {epoch + 1}/{cfg.epochs}")
        if stats.examples:
            total += stats.loss * stats.examples
        seen += stats.examples
        steps += stats.steps
    model.eval()
    return {"num_examples": n, "train_loss": total / seen if seen else math.nan,
            "seconds": time.perf_counter() - start, "steps": steps, "examples_seen": seen,
            "optimizer_state": {"names": names, "adam": optimizer.state_dict()}}


def trainable_names(model: nn.Module) -> list[str]:
    """Names of the trainable parameters, in the optimiser's order (trainable_parameters')."""
    return [name for name, p in model.named_parameters() if p.requires_grad]


def resume_optimizer(optimizer: torch.optim.Optimizer, saved: dict[str, Any] | None, names: list[str],
                     cfg: FineTuneConfig) -> bool:
    """Load an earlier call's Adam state if it was for exactly these parameters; this call's lr and
    weight decay win over the saved ones (a schedule across rounds changes lr). True when loaded."""
    if not saved or saved.get("names") != names:
        return False
    try:
        optimizer.load_state_dict(saved["adam"])
    except (KeyError, ValueError, TypeError):
        return False  # another optimiser's layout: start afresh rather than fail the round
    for group in optimizer.param_groups:
        group.update(lr=cfg.lr, weight_decay=cfg.weight_decay)
        group.pop("initial_lr", None)  # an earlier warm-up's; a new scheduler sets its own
    return True


def warmup_schedule(optimizer: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LRScheduler | None:
    """lr x k/steps at step k (1-based) up to `steps`, then lr; None for no warm-up."""
    if steps <= 0:
        return None
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda done: min(1.0, (done + 1) / steps))
