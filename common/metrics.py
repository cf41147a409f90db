"""Per-image metrics: AUC with bootstrap CI, sensitivity/specificity, ROC curves and plots,
and fixed-bin score histograms (what federated sites share instead of per-image scores).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import rankdata

from common.errors import DataError, MammoError


@dataclass(frozen=True)
class RocCurve:
    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray
    auc: float


def _as_arrays(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels).astype(np.int64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise MammoError(f"labels ({y.size}) and scores ({s.size}) differ in length")
    if not np.all(np.isfinite(s)):
        raise MammoError("scores contain NaN or infinite values")
    if not np.isin(y, (0, 1)).all():
        raise MammoError("labels must be 0 or 1")
    return y, s


def _auc_ranks(y: np.ndarray, s: np.ndarray) -> float:
    """Mann-Whitney AUC (ties count 1/2) from average ranks; NaN when a class is absent."""
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(s)
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def auc(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Per-image ROC AUC. NaN when only one class is present (nothing to rank against)."""
    y, s = _as_arrays(labels, scores)
    return _auc_ranks(y, s)


def _batched_auc(y: np.ndarray, s: np.ndarray) -> np.ndarray:
    """AUC of each row of (y, s) [R, N]; NaN for rows with one class."""
    ranks = rankdata(s, axis=1)
    n_pos = y.sum(axis=1)
    n_neg = y.shape[1] - n_pos
    with np.errstate(invalid="ignore", divide="ignore"):
        return ((ranks * y).sum(axis=1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def bootstrap_auc_ci(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray, n: int = 2000,
                     seed: int = 0, groups: Sequence | np.ndarray | None = None, level: float = 0.95
                     ) -> tuple[float, float]:
    """Percentile bootstrap CI of the AUC. With `groups` (e.g. patient ids) whole groups are resampled,
    keeping the images of one woman together. Resamples with a single class are skipped."""
    y, s = _as_arrays(labels, scores)
    if len(np.unique(y)) < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    if groups is None:
        values = []
        for start in range(0, n, 256):  # chunks bound memory on large test sets
            idx = rng.integers(0, y.size, size=(min(256, n - start), y.size))
            values.append(_batched_auc(y[idx], s[idx]))
        aucs = np.concatenate(values)
    else:
        g = np.asarray(groups).ravel()
        if g.size != y.size:
            raise MammoError(f"groups ({g.size}) and labels ({y.size}) differ in length")
        _, inverse = np.unique(g, return_inverse=True)
        members = [np.flatnonzero(inverse == k) for k in range(inverse.max() + 1)]
        aucs = np.empty(n)
        for i in range(n):
            pick = np.concatenate([members[k] for k in rng.integers(0, len(members), size=len(members))])
            aucs[i] = _auc_ranks(y[pick], s[pick])
    aucs = aucs[np.isfinite(aucs)]
    if aucs.size == 0:
        return float("nan"), float("nan")
    alpha = (1.0 - level) / 2
    return float(np.quantile(aucs, alpha)), float(np.quantile(aucs, 1 - alpha))


def sens_spec_at(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray, threshold: float
                 ) -> tuple[float, float]:
    """(sensitivity, specificity) calling `score >= threshold` positive; NaN for an absent class."""
    y, s = _as_arrays(labels, scores)
    pred = s >= threshold
    pos, neg = y == 1, y == 0
    sens = float(pred[pos].mean()) if pos.any() else float("nan")
    spec = float((~pred[neg]).mean()) if neg.any() else float("nan")
    return sens, spec


def threshold_at_sensitivity(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray,
                             target: float) -> float:
    """Highest threshold whose sensitivity reaches `target` (an operating point chosen on validation data)."""
    y, s = _as_arrays(labels, scores)
    pos = np.sort(s[y == 1])[::-1]
    if pos.size == 0:
        raise MammoError("no positive images: cannot choose a threshold for a sensitivity")
    k = int(np.ceil(target * pos.size)) - 1
    return float(pos[min(max(k, 0), pos.size - 1)])


def roc_curve(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> RocCurve:
    y, s = _as_arrays(labels, scores)
    if len(np.unique(y)) < 2:
        raise MammoError("ROC curve needs both classes")
    from sklearn.metrics import roc_curve as _sk_roc

    fpr, tpr, thr = _sk_roc(y, s)
    return RocCurve(fpr, tpr, thr, _auc_ranks(y, s))


def score_histograms(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray, bins: int = 1000
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Counts of negative / positive scores in `bins` equal bins on [0, 1] (bin i = [i/bins, (i+1)/bins),
    the last bin closed). Scores outside [0, 1] are an error: these are probabilities."""
    y, s = _as_arrays(labels, scores)
    if s.size and (s.min() < 0.0 or s.max() > 1.0):
        raise MammoError("scores must be probabilities in [0, 1] for fixed-bin histograms")
    idx = np.minimum((s * bins).astype(np.int64), bins - 1)
    neg = np.bincount(idx[y == 0], minlength=bins).astype(np.int64)
    pos = np.bincount(idx[y == 1], minlength=bins).astype(np.int64)
    return neg, pos


def _check_hist(neg_counts: Sequence[int] | np.ndarray, pos_counts: Sequence[int] | np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    neg = np.asarray(neg_counts, dtype=np.float64).ravel()
    pos = np.asarray(pos_counts, dtype=np.float64).ravel()
    if neg.shape != pos.shape:
        raise DataError(None, f"histograms differ in bins ({neg.size} vs {pos.size})")
    if (neg < 0).any() or (pos < 0).any() or not (np.isfinite(neg).all() and np.isfinite(pos).all()):
        raise DataError(None, "histogram counts must be finite and non-negative")
    return neg, pos


def auc_from_histograms(neg_counts: Sequence[int] | np.ndarray, pos_counts: Sequence[int] | np.ndarray) -> float:
    """Pooled AUC from summed site histograms; same-bin pairs count 1/2 (the tie rule).

    Equals the AUC of the concatenated scores up to the bin resolution (exactly when no two scores of
    different classes share a bin). NaN when a class is absent.
    """
    neg, pos = _check_hist(neg_counts, pos_counts)
    n_neg, n_pos = neg.sum(), pos.sum()
    if n_neg == 0 or n_pos == 0:
        return float("nan")
    neg_below = np.concatenate([[0.0], np.cumsum(neg)[:-1]])
    return float((pos * (neg_below + 0.5 * neg)).sum() / (n_pos * n_neg))


def roc_from_histograms(neg_counts: Sequence[int] | np.ndarray, pos_counts: Sequence[int] | np.ndarray) -> RocCurve:
    """ROC points at the bin edges (thresholds descending from 1 to 0): call positive when score >= edge."""
    neg, pos = _check_hist(neg_counts, pos_counts)
    n_neg, n_pos = neg.sum(), pos.sum()
    if n_neg == 0 or n_pos == 0:
        raise MammoError("ROC curve needs both classes")
    bins = neg.size
    tpr = np.concatenate([[0.0], np.cumsum(pos[::-1]) / n_pos])
    fpr = np.concatenate([[0.0], np.cumsum(neg[::-1]) / n_neg])
    thresholds = np.concatenate([[np.inf], np.arange(bins - 1, -1, -1) / bins])
    return RocCurve(fpr, tpr, thresholds, auc_from_histograms(neg, pos))


def sens_spec_from_histograms(neg_counts: Sequence[int] | np.ndarray, pos_counts: Sequence[int] | np.ndarray,
                              threshold: float) -> tuple[float, float]:
    """Sensitivity/specificity at `threshold` (rounded down to a bin edge)."""
    neg, pos = _check_hist(neg_counts, pos_counts)
    first = int(np.floor(threshold * neg.size + 1e-9))
    sens = pos[first:].sum() / pos.sum() if pos.sum() else float("nan")
    spec = neg[:first].sum() / neg.sum() if neg.sum() else float("nan")
    return float(sens), float(spec)


def plot_roc(path: str | Path, curves: Mapping[str, RocCurve], title: str = "ROC",
             operating_points: Mapping[str, tuple[float, float]] | None = None) -> Path:
    """Write a PNG with one line per curve (legend shows AUC); operating points as (fpr, tpr) markers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    try:
        for name, curve in curves.items():
            ax.plot(curve.fpr, curve.tpr, label=f"{name} (AUC {curve.auc:.3f})")
        for name, (fpr, tpr) in (operating_points or {}).items():
            ax.plot([fpr], [tpr], "o", label=f"{name} ({tpr:.0%} sens, {1 - fpr:.0%} spec)")
        ax.plot([0, 1], [0, 1], ":", color="grey", linewidth=1)
        ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="1 - specificity", ylabel="sensitivity", title=title)
        ax.legend(loc="lower right", fontsize=8)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path
