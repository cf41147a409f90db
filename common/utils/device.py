"""Device, precision and seeding: CUDA with AMP when present, CPU otherwise."""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator

import numpy as np
import torch


def select_device(requested: str = "auto") -> torch.device:
    """`auto` picks CUDA when available, else CPU; `cpu`/`cuda[:n]` force one."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def use_amp(device: torch.device) -> bool:
    """Mixed precision only on CUDA (CPU autocast is slower for these convnets)."""
    return device.type == "cuda"


@contextlib.contextmanager
def autocast(device: torch.device) -> Iterator[None]:
    if use_amp(device):
        with torch.autocast(device_type="cuda", dtype=torch.float16):
            yield
    else:
        yield


def make_grad_scaler(device: torch.device) -> torch.amp.GradScaler:
    return torch.amp.GradScaler("cuda", enabled=use_amp(device))


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))


def set_cpu_threads(n: int | None) -> None:
    """Limit intra-op threads (virtual sites share the cores)."""
    if n and n > 0:
        torch.set_num_threads(n)
