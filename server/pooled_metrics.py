"""Federated evaluation done right: AUC is not averageable, so sites send score histograms.

Each site returns fixed-bin histograms of its validation scores per class; the server sums
them for the pooled ROC/AUC (equal to the AUC of the concatenated scores up to the bin
resolution), reports each site's own AUC, and picks the operating point on the pooled
histograms (a target specificity or sensitivity, or a fixed threshold): pooled and per-site
TP/FN/TN/FP at that threshold come from the same histograms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from mammo_fl.common.evaluation.metrics import auc_from_histograms
from mammo_fl.common.evaluation.operating_point import Confusion, Target, confusion_at, threshold_for_target
from mammo_fl.server.validate import Screened


@dataclass
class EvalSummary:
    pooled_auc: float
    sens: float
    spec: float
    n_pos: int
    n_neg: int
    site_auc: dict[str, float] = field(default_factory=dict)
    site_sens: dict[str, float] = field(default_factory=dict)
    site_spec: dict[str, float] = field(default_factory=dict)
    neg_hist: np.ndarray | None = None
    pos_hist: np.ndarray | None = None
    threshold: float = math.nan
    target: Target | None = None
    confusion: Confusion = field(default_factory=Confusion)
    site_confusion: dict[str, Confusion] = field(default_factory=dict)
    site_hists: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)


def pool_histograms(accepted: list[Screened], bins: int, target: Target | float) -> EvalSummary:
    """Pool the sites' histograms; per-site figures from each site's own histograms.

    A float `target` is a fixed threshold."""
    if not isinstance(target, Target):
        target = Target("fixed", float(target))
    neg_total = np.zeros(bins, dtype=np.int64)
    pos_total = np.zeros(bins, dtype=np.int64)
    out = EvalSummary(math.nan, math.nan, math.nan, 0, 0, target=target)
    for rep in accepted:
        neg = np.asarray(rep.metrics["hist-neg"], dtype=np.int64)
        pos = np.asarray(rep.metrics["hist-pos"], dtype=np.int64)
        if neg.size != bins or pos.size != bins:
            continue  # screened earlier; defensive against a mismatched bin count
        neg_total += neg
        pos_total += pos
        out.site_auc[rep.site] = auc_from_histograms(neg, pos)
        out.site_hists[rep.site] = (neg, pos)
    out.n_neg, out.n_pos = int(neg_total.sum()), int(pos_total.sum())
    out.neg_hist, out.pos_hist = neg_total, pos_total
    if out.n_neg + out.n_pos:
        out.pooled_auc = auc_from_histograms(neg_total, pos_total)
        out.threshold = threshold_for_target(neg_total, pos_total, target)
    if math.isfinite(out.threshold):
        for site, (neg, pos) in out.site_hists.items():
            counts = confusion_at(neg, pos, out.threshold)
            out.site_confusion[site] = counts
            out.site_sens[site], out.site_spec[site] = counts.sens, counts.spec
            out.confusion = out.confusion + counts  # the pooled counts are the sites' counts summed
        out.sens, out.spec = out.confusion.sens, out.confusion.spec
    return out

