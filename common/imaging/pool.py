"""Ordered parallel map over worker processes, with a progress bar (used to fill the image cache)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

# forkserver preloads: workers fork from a server that imported these once
DEFAULT_PRELOAD = ("mammo_fl.common.imaging.cache", "torch")


def available_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def _one_torch_thread() -> None:
    """Worker processes: one thread each (the pool provides the parallelism)."""
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover
        pass


def map_in_processes(
    fn: Callable[[Any], Any],
    items: Sequence[Any],
    workers: int | None,
    progress: bool,
    *,
    unit: str = "image",
    desc: str = "preprocess",
    preload: Sequence[str] = DEFAULT_PRELOAD,
) -> list[Any]:
    """`[fn(item) for item in items]`, in processes when workers > 1 (None = all cores).

    `fn` and the items must be picklable. With one worker (or one item) everything runs here.
    """
    from tqdm import tqdm

    workers = available_cores() if workers is None else max(1, int(workers))
    workers = min(workers, max(1, len(items)))
    bar = tqdm(total=len(items), unit=unit, desc=desc, disable=not progress)
    results: list[Any] = [None] * len(items)
    try:
        if workers <= 1:
            for i, item in enumerate(items):
                results[i] = fn(item)
                bar.update(1)
            return results
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        # forkserver: workers fork from a clean server that imported torch once (a fork
        # of a parent that already ran torch ops can deadlock; spawn re-imports per worker)
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(list(preload))
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_one_torch_thread) as pool:
            futures = {pool.submit(fn, item): i for i, item in enumerate(items)}
            for fut in as_completed(futures):
                results[futures[fut]] = fut.result()
                bar.update(1)
        return results
    finally:
        bar.close()
