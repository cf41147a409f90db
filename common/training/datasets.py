"""torch Datasets over the preprocessing cache: whole images and patches.

Items are `(float32 tensor [3, H, W], int64 label)` on the model-input scale (0..255 minus the
dataset mean, grey copied to 3 channels). With `augment=True` an item is augmented on its own
(per-image torch ops); training loops prefer `split_augmentation(dataset)`, which returns a
non-augmenting view plus a `BatchAugmenter` so augmentation runs once per batch on the device.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, get_worker_info

from mammo_fl.common.imaging.png16 import read_png16
from mammo_fl.common.training.augment import AugmentSettings, BatchAugmenter, augment_batch
from mammo_fl.common.utils.errors import MammoError

UNLABELLED = -1


def to_model_tensor(arr: np.ndarray, mean: float) -> torch.Tensor:
    """uint16 image (H, W) -> float32 [3, H, W] = png / 65535 * 255 - mean.

    Same arithmetic as `common.imaging.geometry.to_model_input` (tested equal), done in torch on one channel
    and then copied to 3 (a third of the work on the training loop's hot path).
    """
    if arr.ndim != 2:
        raise ValueError(f"expected a 2-D grey image, got shape {arr.shape}")
    grey = torch.from_numpy(np.ascontiguousarray(arr).astype(np.float32))
    grey.mul_(np.float32(255.0 / 65535.0)).sub_(np.float32(mean))
    return grey.unsqueeze(0).expand(3, -1, -1).contiguous()


def _labels(table: pd.DataFrame, column: str) -> np.ndarray:
    if column not in table.columns:
        return np.full(len(table), UNLABELLED, dtype=np.int64)
    return table[column].fillna(UNLABELLED).astype(np.int64).to_numpy()


def _require_columns(table: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise MammoError(f"{what} table lacks column(s) {', '.join(missing)}")


class _CachedImages(Dataset):
    """Shared machinery: uint16 loading, optional RAM preload, per-item or deferred augmentation."""

    def __init__(self, mean: float, augment: bool, seed: int, augment_settings: AugmentSettings | None) -> None:
        self.mean = float(mean)
        self.augment = bool(augment)
        self.seed = int(seed)
        self.augment_settings = augment_settings or AugmentSettings()
        self._arrays: list[np.ndarray] | None = None
        self._generator: torch.Generator | None = None
        self.skipped: list[tuple[str, str]] = []

    # subclasses provide these
    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def _load_uint16(self, index: int) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def _label(self, index: int) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def load_uint16(self, index: int) -> np.ndarray:
        return self._arrays[index] if self._arrays is not None else self._load_uint16(index)

    def preload(self) -> None:
        """Keep every cached image in RAM (small datasets: removes PNG decoding from the training loop)."""
        if self._arrays is None:
            self._arrays = [self._load_uint16(i) for i in range(len(self))]

    def preload_bytes(self) -> int:
        """Estimated RAM for `preload()` (from the first image)."""
        return 0 if len(self) == 0 else int(self.load_uint16(0).nbytes) * len(self)

    def _item_generator(self) -> torch.Generator:
        if self._generator is None:
            info = get_worker_info()  # workers get distinct, loader-seeded streams
            seed = self.seed if info is None else self.seed * 1_000_003 + int(info.seed) % (2**31)
            self._generator = torch.Generator().manual_seed(seed)
        return self._generator

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = to_model_tensor(self.load_uint16(index), self.mean)
        if self.augment:
            x = augment_batch(x[None], self._item_generator(), self.augment_settings, grey=True)[0]
        return x, torch.tensor(self._label(index), dtype=torch.int64)

    def without_augmentation(self) -> _CachedImages:
        """A shallow copy that yields un-augmented items (shares preloaded arrays)."""
        view = copy.copy(self)
        view.augment = False
        return view

    def with_mean(self, mean: float) -> _CachedImages:
        """A shallow copy that subtracts another mean (a model's own preprocessing; shares preloaded arrays)."""
        view = copy.copy(self)
        view.mean = float(mean)
        return view

    def labels(self) -> np.ndarray:
        return np.array([self._label(i) for i in range(len(self))], dtype=np.int64)


class WholeImageDataset(_CachedImages):
    """Whole mammograms from `images` (`image_id, image_path[, label]`) through `ImageCache.load`."""

    def __init__(self, images: pd.DataFrame, cache: Any, mean: float, augment: bool, seed: int = 0,
                 augment_settings: AugmentSettings | None = None) -> None:
        super().__init__(mean, augment, seed, augment_settings)
        _require_columns(images, ("image_id", "image_path"), "images")
        self.images = images.reset_index(drop=True)
        self.cache = cache
        self._paths = self.images["image_path"].astype(str).tolist()
        self._label_array = _labels(self.images, "label")

    def __len__(self) -> int:
        return len(self._paths)

    def _load_uint16(self, index: int) -> np.ndarray:
        return self.cache.load(self._paths[index])

    def _label(self, index: int) -> int:
        return int(self._label_array[index])

    def labels(self) -> np.ndarray:
        return self._label_array.copy()

    @property
    def image_ids(self) -> list[str]:
        return self.images["image_id"].astype(str).tolist()

    @property
    def image_size(self) -> tuple[int, int] | None:
        settings = getattr(self.cache, "settings", None)
        return None if settings is None else (int(settings.height), int(settings.width))


class PatchDataset(_CachedImages):
    """Patches written by the patch-set writer (common.pipeline.patches): a table with `path` (16-bit PNG, relative to
    `root` unless absolute) and the class index in `class_index` (or `label`) 0..4."""

    def __init__(self, patches: pd.DataFrame, mean: float, augment: bool, seed: int = 0,
                 augment_settings: AugmentSettings | None = None, path_column: str = "path",
                 label_column: str | None = None, root: str | Path | None = None) -> None:
        super().__init__(mean, augment, seed, augment_settings)
        _require_columns(patches, (path_column,), "patches")
        self.patches = patches.reset_index(drop=True)
        base = Path(root) if root is not None else None
        self._paths = [str(base / p) if base is not None and not Path(p).is_absolute() else str(p)
                       for p in self.patches[path_column].astype(str)]
        if label_column is None:
            label_column = "class_index" if "class_index" in self.patches.columns else "label"
        self._label_array = _labels(self.patches, label_column)

    def __len__(self) -> int:
        return len(self._paths)

    def _load_uint16(self, index: int) -> np.ndarray:
        return read_png16(self._paths[index])

    def _label(self, index: int) -> int:
        return int(self._label_array[index])

    def labels(self) -> np.ndarray:
        return self._label_array.copy()


def preload_if_small(dataset: Dataset, max_mb: float) -> None:
    """Hold a cached-image dataset in RAM when it fits in `max_mb` (PNG decoding then costs nothing per epoch)."""
    if isinstance(dataset, _CachedImages) and len(dataset) and dataset.preload_bytes() <= max_mb * 2**20:
        dataset.preload()


def split_augmentation(dataset: Dataset, seed: int | None = None) -> tuple[Dataset, BatchAugmenter | None]:
    """(dataset yielding un-augmented items, batch augmenter or None).

    Moves augmentation out of `__getitem__` and onto whole batches on the training device (one
    grid_sample per batch) for datasets of this module; other datasets are returned unchanged.
    """
    if isinstance(dataset, _CachedImages) and dataset.augment:
        # items of these datasets are always one grey image copied to 3 channels
        return dataset.without_augmentation(), BatchAugmenter(dataset.seed if seed is None else seed,
                                                              dataset.augment_settings, grey=True)
    return dataset, None

