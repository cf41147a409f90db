"""The federated operating point in the run's outputs: metrics.csv columns and what final.pt carries.

The threshold is chosen each round on the pooled validation histograms (server/pooled_metrics.py);
here it becomes the row's `threshold, sens, spec, sens_<site>, spec_<site>` and the checkpoint's
`metrics["operating_point"]`, which `mammo-train predict` applies to new images.
"""

from __future__ import annotations

import math
from typing import Any

from mammo_fl.server.pooled_metrics import EvalSummary
from mammo_fl.server.settings import FederationSettings


def operating_point_columns(summary: EvalSummary) -> dict[str, Any]:
    """The row's operating-point columns: pooled threshold/sens/spec, then each site's sens/spec there."""
    row: dict[str, Any] = {"threshold": summary.threshold, "sens": summary.sens, "spec": summary.spec}
    for site in sorted(summary.site_confusion):
        row[f"sens_{site}"] = summary.site_sens[site]
        row[f"spec_{site}"] = summary.site_spec[site]
    return row


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def operating_point_record(row: dict[str, Any], settings: FederationSettings) -> dict[str, Any]:
    """What a round checkpoint (and so final.pt) carries: threshold, target, pooled sens/spec, round."""
    return {
        "threshold": _finite(row.get("threshold")),
        "target": settings.operating_target().to_dict(),
        "sens": _finite(row.get("sens")),
        "spec": _finite(row.get("spec")),
        "round": int(row["round"]),
        "n_pos": int(row.get("n_pos") or 0),
        "n_neg": int(row.get("n_neg") or 0),
        "hist_bins": settings.hist_bins,
        "tta": settings.tta,  # the scores the threshold applies to: with or without flip TTA
        "chosen_on": "pooled validation-score histograms of the sites",
    }
