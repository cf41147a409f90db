"""WholeImageDataset / PatchDataset over real cached files."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from model_fixtures import one_torch_thread, whole_image_set  # noqa: F401 (autouse fixture)
from PIL import Image

from mammo_fl.common.imaging.cache import filter_readable
from mammo_fl.common.imaging.png16 import read_png16
from mammo_fl.common.training.datasets import PatchDataset, WholeImageDataset, split_augmentation
from mammo_fl.common.utils.errors import DataError, MammoError
from mammo_fl.common.imaging.geometry import to_model_input


def test_whole_image_dataset_yields_model_input(tmp_path) -> None:
    images, cache = whole_image_set(tmp_path, n=4, size=(64, 48))
    ds = WholeImageDataset(images, cache, mean=40.0, augment=False)
    assert len(ds) == 4 and ds.image_size == (64, 48)
    x, y = ds[1]
    assert x.shape == (3, 64, 48) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert int(y) == images.loc[1, "label"]
    raw = cache.load(images.loc[1, "image_path"])
    np.testing.assert_allclose(x.numpy(), to_model_input(raw, 40.0), rtol=0, atol=1e-5)
    assert torch.equal(x[0], x[2])  # 3 identical channels
    assert float(x.max()) <= 255 - 40 + 1e-4
    ds.preload()
    assert torch.equal(ds[1][0], x)  # preloaded items are identical
    assert list(ds.labels()) == images["label"].tolist()


def test_augmented_items_differ_but_are_reproducible(tmp_path) -> None:
    images, cache = whole_image_set(tmp_path, n=3)
    a = WholeImageDataset(images, cache, mean=0.0, augment=True, seed=5)
    b = WholeImageDataset(images, cache, mean=0.0, augment=True, seed=5)
    plain = WholeImageDataset(images, cache, mean=0.0, augment=False)
    xa, xb = a[0][0], b[0][0]
    assert torch.equal(xa, xb)
    assert not torch.equal(xa, plain[0][0])
    view, augmenter = split_augmentation(a)
    assert augmenter is not None and not view.augment and torch.equal(view[0][0], plain[0][0])
    assert a.augment  # the original keeps augmenting
    assert split_augmentation(plain)[1] is None


def test_unlabelled_images_and_missing_columns(tmp_path) -> None:
    images, cache = whole_image_set(tmp_path, n=2)
    ds = WholeImageDataset(images.drop(columns=["label"]), cache, mean=0.0, augment=False)
    assert int(ds[0][1]) == -1
    with pytest.raises(MammoError, match="image_path"):
        WholeImageDataset(images.drop(columns=["image_path"]), cache, mean=0.0, augment=False)


def test_unreadable_images_are_reported_and_filtered(tmp_path) -> None:
    images, cache = whole_image_set(tmp_path, n=3)
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"not a dicom")
    images = pd.concat([images, pd.DataFrame([{"image_id": "bad", "image_path": str(bad), "label": 0}])])
    ds = WholeImageDataset(images, cache, mean=0.0, augment=False)
    with pytest.raises(DataError):
        ds[3]
    kept, skipped = filter_readable(images, cache, workers=1)
    assert len(kept) == 3 and len(skipped) == 1 and skipped[0][0] == str(bad)


def test_patch_dataset_reads_16bit_pngs(tmp_path) -> None:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(5):
        arr = rng.integers(0, 65535, size=(24, 24), dtype=np.uint16)
        rel = f"class{i % 5}/p{i}.png"
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(tmp_path / rel)
        assert np.array_equal(read_png16(tmp_path / rel), arr)
        rows.append({"path": rel, "class_index": i % 5})
    ds = PatchDataset(pd.DataFrame(rows), mean=52.18, augment=False, root=tmp_path)
    x, y = ds[3]
    assert x.shape == (3, 24, 24) and int(y) == 3
    np.testing.assert_allclose(x.numpy(), to_model_input(read_png16(tmp_path / rows[3]["path"]), 52.18), atol=1e-5)
    (tmp_path / "broken.png").write_bytes(b"xx")
    broken = PatchDataset(pd.DataFrame([{"path": "broken.png", "label": 0}]), 0.0, False, root=tmp_path)
    with pytest.raises(DataError, match="cannot read PNG"):
        broken[0]
