"""RUNDIR/histograms.npz: every round's per-site validation-score histograms, kept for the run report.

metrics.csv holds one AUC per round and site; confidence intervals and the ROC need the counts
themselves. Arrays are named `<round>/<site>/neg` and `<round>/<site>/pos` (int32 counts per bin).
The file is rewritten atomically each round; rounds at or after the one being saved are dropped
first, so a resumed run never mixes a killed launch's round with its redo.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from mammo_fl.common.utils.errors import DataError

FILE_NAME = "histograms.npz"
SiteHistograms = dict[str, tuple[np.ndarray, np.ndarray]]


def histogram_file(root: Path) -> Path:
    return Path(root) / FILE_NAME


def load_histograms(root: Path) -> dict[int, SiteHistograms]:
    """{round: {site: (neg, pos)}}; empty when the run kept none (older runs)."""
    path = histogram_file(root)
    if not path.exists():
        return {}
    try:
        with np.load(path) as data:
            arrays = {key: np.asarray(data[key], dtype=np.int64) for key in data.files}
    except (OSError, ValueError) as exc:
        raise DataError(path, f"unreadable histogram file ({exc})") from None
    out: dict[int, SiteHistograms] = {}
    for key in arrays:
        rnd, rest = key.split("/", 1)
        site, kind = rest.rsplit("/", 1)  # site names may hold '/' in principle; round and kind never do
        if kind == "neg":
            out.setdefault(int(rnd), {})[site] = (arrays[key], arrays[f"{rnd}/{site}/pos"])
    return dict(sorted(out.items()))


def save_round_histograms(root: Path, rnd: int, sites: SiteHistograms) -> None:
    """Add round `rnd` (replacing it and any later round) and rewrite the file atomically."""
    kept = {r: h for r, h in load_histograms(root).items() if r < rnd}
    kept[rnd] = sites
    arrays = {f"{r}/{site}/{kind}": np.asarray(counts, dtype=np.int32)
              for r, by_site in kept.items() for site, pair in by_site.items()
              for kind, counts in zip(("neg", "pos"), pair, strict=True)}
    path = histogram_file(root)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".npz", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez_compressed(fh, **arrays)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
