"""Shared training-loop pieces: class-balanced loss, freezing per stage, an epoch runner (AMP on CUDA).

Frozen BatchNorm: while a BN layer's parameters are frozen it is kept in eval mode (running
statistics, not batch statistics). With batch 2 whole images, batch statistics of a frozen
pretrained trunk would be noisy and would silently change the "frozen" trunk's running averages.
"""

from __future__ import annotations

import itertools
import math
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from mammo_fl.common.utils.device import autocast
from mammo_fl.common.utils.errors import ConfigError, MammoError
from mammo_fl.common.models.patch import PatchModel, stage2_modules
from mammo_fl.common.models.whole import WholeImageModel

PATCH_STAGES = ("head", "top", "all")
WHOLE_STAGES = ("head", "top", "all")


def class_balanced_weights(labels: torch.Tensor) -> torch.Tensor:
    """w_i = 1 / (fraction of the batch with class y_i): every class present counts equally."""
    counts = torch.bincount(labels)
    return labels.numel() / counts[labels].to(torch.float32)


def balanced_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, class_balance: bool = True) -> torch.Tensor:
    """Cross-entropy with per-batch class-balancing sample weights, normalised by the weight sum
    (= mean over the classes present of each class's mean loss; scale independent of the batch mix)."""
    ce = F.cross_entropy(logits.float(), labels, reduction="none")
    if not class_balance:
        return ce.mean()
    w = class_balanced_weights(labels)
    return (w * ce).sum() / w.sum()


def _modules_for_stage(model: nn.Module, stage: str) -> list[nn.Module]:
    if isinstance(model, PatchModel):
        if stage not in PATCH_STAGES:
            raise ConfigError(f"unknown patch training stage {stage!r}; known: {', '.join(PATCH_STAGES)}")
        return {"head": [model.fc], "top": stage2_modules(model), "all": [model]}[stage]
    if isinstance(model, WholeImageModel):
        if stage not in WHOLE_STAGES:
            raise ConfigError(f"unknown whole-image training stage {stage!r}; known: {', '.join(WHOLE_STAGES)}")
        return {"head": [model.head], "top": [model.top, model.head], "all": [model]}[stage]
    if stage != "all":
        raise ConfigError(f"stage {stage!r} needs a PatchModel or WholeImageModel")
    return [model]


def set_trainable(model: nn.Module, stage: str) -> int:
    """Freeze everything but the modules of `stage`; returns the number of trainable parameters.

    Patch model: "head" = dense layer (stage 1), "top" = the paper's top layers + head (stage 2),
    "all" (stage 3). Whole-image model: "top" = new top blocks + head (stage 1), "all" (stage 2),
    "head" = dense layer only.
    """
    for p in model.parameters():
        p.requires_grad_(False)
    for module in _modules_for_stage(model, stage):
        for p in module.parameters():
            p.requires_grad_(True)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def train_mode(model: nn.Module, keep_bn_statistics: bool = False) -> None:
    """model.train(), except BatchNorm layers whose parameters are all frozen stay in eval mode.

    keep_bn_statistics: every BatchNorm layer stays in eval mode (its affine parameters still train):
    the whole-image model's all-layer stage keeps the statistics the patch classifier learned, which
    a batch of a few whole images (mostly background) would otherwise overwrite.
    """
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            params = list(m.parameters(recurse=False))
            if keep_bn_statistics or (params and not any(p.requires_grad for p in params)):
                m.eval()


class ProximalTerm:
    """FedProx: mu/2 * sum ||w - w_ref||^2 over the trainable parameters."""

    def __init__(self, model: nn.Module, reference_state: dict[str, torch.Tensor], mu: float) -> None:
        self.mu = float(mu)
        self.pairs: list[tuple[nn.Parameter, torch.Tensor]] = []
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            if name not in reference_state:
                raise MammoError(f"FedProx reference state lacks parameter {name!r}")
            ref = reference_state[name]
            if tuple(ref.shape) != tuple(p.shape):
                raise MammoError(f"FedProx reference {name!r} has shape {tuple(ref.shape)}, model {tuple(p.shape)}")
            self.pairs.append((p, ref.detach().to(device=p.device, dtype=p.dtype)))

    def __call__(self) -> torch.Tensor:
        total = sum(((p - ref) ** 2).sum() for p, ref in self.pairs)
        return 0.5 * self.mu * total


def make_loader(dataset: Dataset, batch_size: int, *, shuffle: bool, seed: int = 0, num_workers: int = 0,
                device: torch.device | None = None, drop_last: bool = False) -> DataLoader:
    """A seeded DataLoader (same order for the same seed)."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                      generator=torch.Generator().manual_seed(int(seed)), drop_last=drop_last,
                      pin_memory=bool(device is not None and device.type == "cuda"),
                      persistent_workers=num_workers > 0)


def needs_drop_last(model: nn.Module, n: int, batch_size: int) -> bool:
    """BatchNorm1d (heatmap+FC top) cannot train on a last batch of one sample."""
    has_bn1d = any(isinstance(m, nn.BatchNorm1d) for m in model.modules())
    return has_bn1d and n > batch_size and n % batch_size == 1


@dataclass
class EpochStats:
    loss: float
    examples: int
    steps: int
    seconds: float


class Prefetcher:
    """Batches from `loader`, moved to the device and augmented in a background thread, `depth` ahead of the step.

    PNG decoding, the uint16 -> float conversion, collation, the host->device copy (pinned memory on
    CUDA) and the batch augmentation run while the model steps on the previous batch: torch, numpy and
    PIL release the GIL in their kernels, so on a CPU the data side takes the other core instead of
    stalling the step. Batches come out in the loader's order and the augmenter's generator is drawn
    in that same order, and no more than `max_batches` are drawn: results are bit-identical to
    doing the same work inline.
    """

    _END = object()

    def __init__(self, loader: Iterable, device: torch.device,
                 augmenter: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 max_batches: int | None = None, depth: int = 2) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        # the iterator is made here, in the training thread: a DataLoader without its own generator draws
        # its seeds from torch's global RNG at this point, exactly as an inline loop would
        batches = iter(loader)
        self._thread = threading.Thread(target=self._fill, args=(batches, device, augmenter, max_batches),
                                        name="batch-prefetch", daemon=True)
        self._thread.start()

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _fill(self, batches: Iterator, device: torch.device,
              augmenter: Callable[[torch.Tensor], torch.Tensor] | None, max_batches: int | None) -> None:
        try:
            with torch.no_grad():
                for x, y in itertools.islice(batches, max_batches):  # never draws a batch past max_batches
                    x = x.to(device, non_blocking=True)
                    y = y.to(device, non_blocking=True)
                    if augmenter is not None:
                        x = augmenter(x)
                    if not self._put((x, y)):
                        return
        except BaseException as exc:  # noqa: BLE001 - re-raised in the training thread
            self._put(exc)
            return
        self._put(self._END)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            item = self._queue.get()
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def run_epoch(model: nn.Module, loader: Iterable, optimizer: torch.optim.Optimizer, device: torch.device, *,
              scaler: torch.amp.GradScaler | None = None,
              augmenter: Callable[[torch.Tensor], torch.Tensor] | None = None,
              class_balance: bool = True, proximal: ProximalTerm | None = None, max_steps: int | None = None,
              progress: bool = False, desc: str = "train", keep_bn_statistics: bool = False,
              scheduler: torch.optim.lr_scheduler.LRScheduler | None = None) -> EpochStats:
    """One pass over `loader`: (augment on device, a batch ahead) -> forward under autocast -> balanced CE
    (+ prox) -> step. The loss is summed on the device: nothing per step waits for the device."""
    train_mode(model, keep_bn_statistics)
    start = time.perf_counter()
    total = torch.zeros((), dtype=torch.float64, device=device)
    examples, steps = 0, 0
    check_finite = scaler is None or not scaler.is_enabled()  # with AMP the scaler skips non-finite steps
    batches = Prefetcher(loader, device, augmenter, max_batches=max_steps)
    bar = tqdm(batches, desc=desc, leave=False, disable=not progress, unit="batch")
    try:
        for x, y in bar:
            with autocast(device):
                logits = model(x)
            loss = balanced_cross_entropy(logits, y, class_balance)
            if proximal is not None and proximal.mu > 0:
                loss = loss + proximal()
            if check_finite and not torch.isfinite(loss):
                raise MammoError(f"training diverged: loss is {loss.item()} at step {steps + 1} "
                                 "(lower the learning rate)")
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            if scheduler is not None:  # per optimiser step (a skipped AMP step still counts: warm-up is short)
                scheduler.step()
            total += loss.detach().double() * y.numel()
            examples += y.numel()
            steps += 1
            if progress:
                bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
    finally:
        bar.close()
        batches.close()
    mean = float(total) / examples if examples else math.nan
    return EpochStats(loss=mean, examples=examples, steps=steps, seconds=time.perf_counter() - start)
