"""Per-image metrics: AUC with bootstrap CI, sensitivity/specificity, ROC curves and plots,
and fixed-bin score histograms (what federated sites share instead of per-image scores).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import rankdata

from mammo_fl.common.utils.errors import DataError, MammoError


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


def _bootstrap(size: int, n: int, seed: int, groups: Sequence | np.ndarray | None,
               stat: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """`stat` over n resamples of `size` items, finite values only. `stat` maps an [R, M] index array
    (one resample per row) to R values. With `groups`, whole groups are drawn with replacement."""
    rng = np.random.default_rng(seed)
    if groups is None:
        # chunks of 256 resamples bound memory on large test sets
        values = np.concatenate([stat(rng.integers(0, size, size=(min(256, n - start), size)))
                                 for start in range(0, n, 256)])
    else:
        g = np.asarray(groups).ravel()
        if g.size != size:
            raise MammoError(f"groups ({g.size}) and labels ({size}) differ in length")
        _, inverse = np.unique(g, return_inverse=True)
        members = [np.flatnonzero(inverse == k) for k in range(inverse.max() + 1)]
        values = np.concatenate([
            stat(np.concatenate([members[k] for k in rng.integers(0, len(members), size=len(members))])[None, :])
            for _ in range(n)])
    return values[np.isfinite(values)]


def _interval(values: np.ndarray, level: float) -> tuple[float, float]:
    if values.size == 0:
        return float("nan"), float("nan")
    alpha = (1.0 - level) / 2
    return float(np.quantile(values, alpha)), float(np.quantile(values, 1 - alpha))


def bootstrap_auc_ci(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray, n: int = 2000,
                     seed: int = 0, groups: Sequence | np.ndarray | None = None, level: float = 0.95
                     ) -> tuple[float, float]:
    """Percentile bootstrap CI of the AUC. With `groups` (e.g. patient ids) whole groups are resampled,
    keeping the images of one woman together. Resamples with a single class are skipped."""
    y, s = _as_arrays(labels, scores)
    if len(np.unique(y)) < 2:
        return float("nan"), float("nan")
    return _interval(_bootstrap(y.size, n, seed, groups, lambda idx: _batched_auc(y[idx], s[idx])), level)


@dataclass(frozen=True)
class PairedAucDifference:
    """AUC(a) - AUC(b) on the same images, with a paired bootstrap (both models scored on each resample)."""
    auc_a: float
    auc_b: float
    difference: float
    ci: tuple[float, float]
    share_a_better: float  # share of resamples where a's AUC is higher (ties count 1/2)
    n: int
    n_pos: int


def paired_auc_difference(labels: Sequence[int] | np.ndarray, scores_a: Sequence[float] | np.ndarray,
                          scores_b: Sequence[float] | np.ndarray, n: int = 2000, seed: int = 0,
                          groups: Sequence | np.ndarray | None = None, level: float = 0.95) -> PairedAucDifference:
    """Is model a better than model b on this test set? Resampling the images (or patients) once for
    both models keeps their correlation, so the CI is much tighter than comparing two separate CIs."""
    if n < 1:
        raise MammoError(f"the bootstrap needs at least one resample (got {n})")
    y, a = _as_arrays(labels, scores_a)
    _, b = _as_arrays(labels, scores_b)
    if len(np.unique(y)) < 2:
        raise MammoError("a paired AUC comparison needs both benign and malignant images")
    diffs = _bootstrap(y.size, n, seed, groups, lambda idx: _batched_auc(y[idx], a[idx]) - _batched_auc(y[idx], b[idx]))
    auc_a, auc_b = _auc_ranks(y, a), _auc_ranks(y, b)
    share = float(((diffs > 0).sum() + 0.5 * (diffs == 0).sum()) / diffs.size) if diffs.size else float("nan")
    return PairedAucDifference(auc_a=auc_a, auc_b=auc_b, difference=auc_a - auc_b, ci=_interval(diffs, level),
                               share_a_better=share, n=int(y.size), n_pos=int(y.sum()))


def paired_mean_auc_difference(labels: Sequence[int] | np.ndarray, scores_a: Sequence[Sequence[float] | np.ndarray],
                               scores_b: Sequence[Sequence[float] | np.ndarray], n: int = 2000, seed: int = 0,
                               groups: Sequence | np.ndarray | None = None, level: float = 0.95
                               ) -> PairedAucDifference:
    """Mean over repeated runs (e.g. training seeds) of AUC(a_r) - AUC(b_r), all scored on the same images.

    Each resample of the images (or patients) is applied to every run at once, so the CI is that of
    the mean difference under test-set sampling; the runs' own spread is for the caller to show."""
    if n < 1:
        raise MammoError(f"the bootstrap needs at least one resample (got {n})")
    if not scores_a or len(scores_a) != len(scores_b):
        raise MammoError(f"need the same number (>= 1) of runs for a and b, got {len(scores_a)} and {len(scores_b)}")
    y = _as_arrays(labels, scores_a[0])[0]
    if len(np.unique(y)) < 2:
        raise MammoError("a paired AUC comparison needs both benign and malignant images")
    a = np.stack([_as_arrays(y, s)[1] for s in scores_a])
    b = np.stack([_as_arrays(y, s)[1] for s in scores_b])

    def mean_diff(idx: np.ndarray) -> np.ndarray:
        return np.mean([_batched_auc(y[idx], ar[idx]) - _batched_auc(y[idx], br[idx]) for ar, br in zip(a, b)], axis=0)

    diffs = _bootstrap(y.size, n, seed, groups, mean_diff)
    auc_a = float(np.mean([_auc_ranks(y, ar) for ar in a]))
    auc_b = float(np.mean([_auc_ranks(y, br) for br in b]))
    share = float(((diffs > 0).sum() + 0.5 * (diffs == 0).sum()) / diffs.size) if diffs.size else float("nan")
    return PairedAucDifference(auc_a=auc_a, auc_b=auc_b, difference=auc_a - auc_b, ci=_interval(diffs, level),
                               share_a_better=share, n=int(y.size), n_pos=int(y.sum()))


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


def threshold_at_specificity(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray,
                             target: float) -> float:
    """Lowest threshold (recall = score >= threshold) whose specificity reaches `target`: just above the
    ceil(target * N)-th lowest negative score."""
    y, s = _as_arrays(labels, scores)
    neg = np.sort(s[y == 0])
    if neg.size == 0:
        raise MammoError("no negative images: cannot choose a threshold for a specificity")
    need = int(np.ceil(target * neg.size - 1e-9))
    if need <= 0:
        return float(neg[0])
    return float(np.nextafter(neg[min(need, neg.size) - 1], np.inf))


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


def _batched_histogram_auc(neg: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """auc_from_histograms of each row of [R, bins] count arrays; NaN for rows with one class."""
    n_neg, n_pos = neg.sum(axis=1), pos.sum(axis=1)
    neg_below = np.cumsum(neg, axis=1) - neg
    with np.errstate(invalid="ignore", divide="ignore"):
        return (pos * (neg_below + 0.5 * neg)).sum(axis=1) / (n_pos * n_neg)


def bootstrap_auc_ci_from_histograms(neg_counts: Sequence[int] | np.ndarray, pos_counts: Sequence[int] | np.ndarray,
                                     n: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the histogram AUC: resampling N images with replacement is drawing their
    bin-and-class counts from a multinomial over the 2 x bins cells, so the histograms suffice.
    Resamples with a single class are skipped (as in bootstrap_auc_ci)."""
    neg, pos = _check_hist(neg_counts, pos_counts)
    total = int(neg.sum() + pos.sum())
    if neg.sum() == 0 or pos.sum() == 0 or n < 1:
        return float("nan"), float("nan")
    occupied = (neg + pos) > 0  # empty bins change no AUC; dropping them makes each draw ~bins/N times cheaper
    neg, pos = neg[occupied], pos[occupied]
    cells = np.concatenate([neg, pos]) / total
    rng = np.random.default_rng(seed)
    values = []
    for start in range(0, n, 256):  # chunks bound memory with 1000-bin histograms
        draws = rng.multinomial(total, cells, size=min(256, n - start)).astype(np.float64)
        values.append(_batched_histogram_auc(draws[:, :neg.size], draws[:, neg.size:]))
    out = np.concatenate(values)
    return _interval(out[np.isfinite(out)], level)


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
