"""The training loop decodes and augments a batch ahead in a background thread: same weights, same loss,
same random streams as doing that work inline, and errors still reach the caller."""

from __future__ import annotations

import threading

import pytest
import torch
from model_fixtures import TINY_WHOLE_SPEC, one_torch_thread, whole_image_set  # noqa: F401 (autouse fixture)

from mammo_fl.common.models import build_model
from mammo_fl.common.training.augment import BatchAugmenter
from mammo_fl.common.training.datasets import WholeImageDataset
from mammo_fl.common.training.loops import balanced_cross_entropy, make_loader, run_epoch, train_mode
from mammo_fl.common.utils.errors import DataError

CPU = torch.device("cpu")


def _inline_epoch(model, loader, opt, augmenter, max_steps):
    """The loop without prefetching: fetch, augment, step, one batch after the other."""
    train_mode(model)
    total, n, steps = 0.0, 0, 0
    for x, y in loader:
        if steps >= max_steps:
            break
        with torch.no_grad():
            x = augmenter(x)
        loss = balanced_cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += float(loss.detach()) * y.numel()
        n += y.numel()
        steps += 1
    return total / n


def _setup(tmp_path):
    table, cache = whole_image_set(tmp_path, n=12, size=(64, 48))
    torch.manual_seed(0)
    model = build_model("whole_image", TINY_WHOLE_SPEC)
    ds = WholeImageDataset(table, cache, mean=40.0, augment=False)
    return model, ds


def test_prefetched_epoch_is_bit_identical_to_the_inline_loop(tmp_path):
    model_a, ds = _setup(tmp_path)
    model_b = build_model("whole_image", TINY_WHOLE_SPEC)
    model_b.load_state_dict(model_a.state_dict())
    runs = []
    for model, prefetched in ((model_a, True), (model_b, False)):
        aug = BatchAugmenter(7, grey=True)
        loader = make_loader(ds, 4, shuffle=True, seed=3)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        if prefetched:
            loss = run_epoch(model, loader, opt, CPU, augmenter=aug, max_steps=2).loss
        else:
            loss = _inline_epoch(model, loader, opt, aug, max_steps=2)
        runs.append((loss, aug.generator.get_state()))
    assert runs[0][0] == runs[1][0]
    # max_steps=2 of 3 batches: the prefetcher did not augment a batch the step never used
    assert torch.equal(runs[0][1], runs[1][1])
    for (k, a), b in zip(model_a.state_dict().items(), model_b.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_a_data_error_in_the_prefetch_thread_reaches_the_caller(tmp_path):
    model, ds = _setup(tmp_path)
    ds._paths[5] = str(tmp_path / "gone.dcm")  # the cache cannot build this one
    before = threading.active_count()
    with pytest.raises(DataError):
        run_epoch(model, make_loader(ds, 4, shuffle=False), torch.optim.Adam(model.parameters()), CPU)
    assert threading.active_count() == before  # the prefetch thread is gone
