"""The run report's figures as PNG data URIs (embedded, so the report is one self-contained file)."""

from __future__ import annotations

import base64
import io
import math
from typing import Any

from mammo_fl.server.report_data import ReportData
from mammo_fl.server.svg_chart import site_colors


def _figure(width: float = 6.0, height: float = 4.0) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height), dpi=110)


def _data_uri(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    try:
        fig.tight_layout()
        fig.savefig(buf, format="png")
    finally:
        plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def roc_plot(data: ReportData) -> str | None:
    """Pooled ROC of the final round (summed histograms), per-site ROCs, the operating point marked."""
    if data.roc is None:
        return None
    colors = site_colors(sorted(data.site_rocs))
    fig, ax = _figure(5.5, 5.0)
    for site, curve in sorted(data.site_rocs.items()):
        ax.plot(curve.fpr, curve.tpr, lw=1, ls="--", color=colors[site], label=f"{site} (AUC {curve.auc:.3f})")
    ax.plot(data.roc.fpr, data.roc.tpr, lw=2.5, color="black", label=f"pooled (AUC {data.roc.auc:.3f})")
    for site in data.sites:
        if site.counts is not None and site.name in colors and not math.isnan(site.sens) and not math.isnan(site.spec):
            ax.plot([1 - site.spec], [site.sens], "o", ms=6, color=colors[site.name], mec="white")
    if data.pooled_counts is not None:
        pc = data.pooled_counts
        ax.plot([1 - pc.spec], [pc.sens], "*", ms=16, color="#c0392b", mec="black",
                label=f"operating point: sens {pc.sens:.1%}, spec {pc.spec:.1%}")
    ax.plot([0, 1], [0, 1], ":", color="grey", lw=1)
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="1 - specificity", ylabel="sensitivity",
           title=f"Validation ROC, round {data.rounds[-1].round} (final model)")
    ax.legend(loc="lower right", fontsize=7)
    return _data_uri(fig)


def auc_plot(data: ReportData) -> str | None:
    """Pooled AUC per round with its 95% bootstrap band, per-site AUC as dashed lines."""
    rounds = [r.round for r in data.rounds]
    if not rounds:
        return None
    fig, ax = _figure()
    names = sorted({n for r in data.rounds for n in r.sites})
    colors = site_colors(names)
    for name in names:
        ax.plot(rounds, [r.sites[name].auc if name in r.sites else math.nan for r in data.rounds], ".--", lw=1,
                color=colors[name], label=name)
    ax.plot(rounds, [r.pooled.auc for r in data.rounds], "o-", lw=2.5, color="black", label="pooled")
    lo = [r.pooled.ci[0] for r in data.rounds]
    hi = [r.pooled.ci[1] for r in data.rounds]
    if any(not math.isnan(v) for v in lo):
        ax.fill_between(rounds, lo, hi, color="black", alpha=0.12, label="pooled 95% CI")
    shown = [v for r in data.rounds for v in (r.pooled.auc, r.pooled.ci[0], *(s.auc for s in r.sites.values()))]
    bottom = min([0.5, *(v for v in shown if not math.isnan(v))])
    ax.set(xlabel="round", ylabel="validation AUC", ylim=(math.floor(bottom * 10) / 10, 1.0))
    ax.set_xticks(rounds if len(rounds) <= 15 else rounds[:: max(1, len(rounds) // 10)])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _data_uri(fig)
