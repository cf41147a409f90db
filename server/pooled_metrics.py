"""Federated evaluation done right: AUC is not averageable, so sites send score histograms.

Each site returns fixed-bin histograms of its validation scores per class; the server sums
them for the pooled ROC/AUC (equal to the AUC of the concatenated scores up to the bin
resolution) and also reports each site's own AUC and sensitivity/specificity at a threshold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from mammo_fl.common.evaluation.metrics import auc_from_histograms, sens_spec_from_histograms
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


def pool_histograms(accepted: list[Screened], bins: int, threshold: float) -> EvalSummary:
    """Pool the sites' histograms; per-site figures from each site's own histograms."""
    neg_total = np.zeros(bins, dtype=np.int64)
    pos_total = np.zeros(bins, dtype=np.int64)
    out = EvalSummary(math.nan, math.nan, math.nan, 0, 0)
    for rep in accepted:
        neg = np.asarray(rep.metrics["hist-neg"], dtype=np.int64)
        pos = np.asarray(rep.metrics["hist-pos"], dtype=np.int64)
        if neg.size != bins or pos.size != bins:
            continue  # screened earlier; defensive against a mismatched bin count
        neg_total += neg
        pos_total += pos
        out.site_auc[rep.site] = auc_from_histograms(neg, pos)
        out.site_sens[rep.site], out.site_spec[rep.site] = sens_spec_from_histograms(neg, pos, threshold)
    out.n_neg, out.n_pos = int(neg_total.sum()), int(pos_total.sum())
    if out.n_neg + out.n_pos:
        out.pooled_auc = auc_from_histograms(neg_total, pos_total)
        out.sens, out.spec = sens_spec_from_histograms(neg_total, pos_total, threshold)
    out.neg_hist, out.pos_hist = neg_total, pos_total
    return out


def check_bins(accepted: list[Screened], bins: int) -> tuple[list[Screened], list[tuple[Screened, str]]]:
    """Histograms must have the bin count the server asked for."""
    good, bad = [], []
    for rep in accepted:
        n_neg, n_pos = len(rep.metrics["hist-neg"]), len(rep.metrics["hist-pos"])
        if n_neg != bins or n_pos != bins:
            bad.append((rep, f"histograms have {n_neg}/{n_pos} bins, expected {bins}"))
        else:
            good.append(rep)
    return good, bad
