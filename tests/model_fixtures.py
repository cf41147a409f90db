"""Crafted whole-image sets for the models/training tests (engineer C1): real DICOM files (written
with A's `write_dicom`), read through the real `ImageCache`. Positives carry a bright disc, so a tiny
net can learn them in a few steps.

Import: `from model_fixtures import whole_image_set, TINY_WHOLE_SPEC` (tests/ is on sys.path).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from data_fixtures import breast_phantom, disc_mask, write_dicom

from mammo_fl.common.imaging.cache import ImageCache
from mammo_fl.common.imaging.geometry import PreprocessSettings


# Torch threads of the model tests: 1 by default (on 2 cores shared by many processes, 2 OpenMP threads
# spin-wait on each other, measured 25x slower than 1 thread under load). MAMMO_TEST_THREADS=2 runs them
# with 2, to check that the learning tests' margins hold for another summation order.
TEST_THREADS = max(1, int(os.environ.get("MAMMO_TEST_THREADS", "1")))


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Import into a test module to make it autouse there (sets TEST_THREADS torch threads)."""
    old = torch.get_num_threads()
    torch.set_num_threads(TEST_THREADS)
    yield
    torch.set_num_threads(old)


TINY_WHOLE_SPEC = {"trunk": "resnet_tiny", "top": {"type": "resnet", "blocks": [[8, 8, 16, 1], [8, 8, 16, 1]]},
                   "num_classes": 2, "dropout": 0.0}


def whole_image_set(root: str | Path, n: int = 16, size: tuple[int, int] = (64, 48), seed: int = 0,
                    positives: float = 0.5) -> tuple[pd.DataFrame, ImageCache]:
    """`n` DICOMs of `size` (H, W) under root/dicom, an images table and a cache (min side lowered)."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    h, w = size
    rows = []
    n_pos = int(round(n * positives))
    for i in range(n):
        label = int(i < n_pos)
        img = breast_phantom(h, w, seed=seed * 1000 + i).astype(np.int64)
        if label:
            cy, cx = int(rng.integers(h // 3, 2 * h // 3)), int(rng.integers(w // 8, w // 3))
            img[disc_mask(h, w, cy, cx, max(3, h // 8))] = 65000
        path = write_dicom(root / "dicom" / f"img{i:03d}.dcm", img.clip(0, 65535).astype(np.uint16),
                           patient_id=f"P{i:03d}")
        rows.append({"image_id": f"img{i:03d}", "image_path": str(path), "patient_id": f"P{i:03d}", "label": label})
    cache = ImageCache(root / "cache", PreprocessSettings(h, w, "paper"), min_side=8)
    order = rng.permutation(n)  # mix classes so dataset order is not sorted by label
    return pd.DataFrame(rows).iloc[order].reset_index(drop=True), cache
