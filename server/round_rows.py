"""The rows of metrics.csv: one row per global model (round 0 = the initial model, round r = round_r.pt).

With one message per round, a row is completed in two steps: round r's replies give its training
figures (loss, sites, bytes, the sites' compute, and `round_seconds` = from the round's first message
to its committed checkpoint), and round r+1's replies (or the final evaluation after the last round)
give the AUC of the model round r produced. `evaluated_by` says which message carried the evaluation.
"""

from __future__ import annotations

from typing import Any

from mammo_fl.server.operating_point import operating_point_columns, operating_point_record
from mammo_fl.server.pooled_metrics import EvalSummary
from mammo_fl.server.settings import FederationSettings
from mammo_fl.server.validate import Screened


def site_seconds(train: list[Screened], evals: list[Screened]) -> dict[str, float]:
    """Each site's own compute in one exchange: evaluation + training."""
    out: dict[str, float] = {}
    for rep in evals:
        out[rep.site] = out.get(rep.site, 0.0) + float(rep.metrics["eval-seconds"])
    for rep in train:
        out[rep.site] = out.get(rep.site, 0.0) + float(rep.metrics["train-seconds"])
    return out


def train_row(rnd: int, accepted: list[Screened], evals: list[Screened], rejected: int,
              bytes_down: float, bytes_up: float, wire_dtype: str) -> dict[str, Any]:
    total = sum(int(r.metrics["num-examples"]) for r in accepted)
    loss = sum(float(r.metrics["train-loss"]) * int(r.metrics["num-examples"]) for r in accepted) / total
    compute = site_seconds(accepted, evals)
    return {
        "round": rnd,
        "sites": len(accepted),
        "train_loss": loss,
        "max_site_train_seconds": max(float(r.metrics["train-seconds"]) for r in accepted),
        # the sum shows queueing: with fewer CPU/GPU slots than sites the exchange takes ~sum/slots
        "sum_site_train_seconds": sum(float(r.metrics["train-seconds"]) for r in accepted),
        "max_site_eval_seconds": max((float(r.metrics["eval-seconds"]) for r in evals), default=0.0),
        "max_site_seconds": max(compute.values()),
        "bytes_down_per_site": bytes_down,
        "bytes_up_per_site": bytes_up,
        "wire": wire_dtype,
        "rejected": rejected,
        "site_names": ",".join(sorted(r.site for r in accepted)),
    }


def evaluation_fields(accepted: list[Screened], summary: EvalSummary) -> dict[str, Any]:
    """A model's evaluation columns: pooled and per-site AUC, and the operating point chosen on the
    pooled histograms with each site's sens/spec there (server/operating_point.py)."""
    fields: dict[str, Any] = {
        "pooled_auc": summary.pooled_auc,
        "eval_sites": len(accepted),
        "n_pos": summary.n_pos,
        "n_neg": summary.n_neg,
    }
    for site, value in sorted(summary.site_auc.items()):
        fields[f"auc_{site}"] = value
    fields.update(operating_point_columns(summary))  # threshold, sens, spec, sens_<site>, spec_<site>
    return fields


def checkpoint_metrics(row: dict[str, Any], settings: FederationSettings) -> dict[str, Any]:
    """What a round checkpoint carries: its row's figures and, once the model was evaluated, the
    operating point chosen on its pooled histograms (applied by `mammo-train predict`)."""
    metrics: dict[str, Any] = {k: v for k, v in row.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    if row.get("evaluated_by"):
        metrics["evaluated_by"] = row["evaluated_by"]
        metrics["operating_point"] = operating_point_record(row, settings)
    return metrics


def row_for(rows: list[dict[str, Any]], model_round: int) -> dict[str, Any]:
    """The row of `model_round` (created in order when missing: round 0 only comes from evaluate-initial)."""
    for row in rows:
        if row["round"] == model_round:
            return row
    row = {"round": model_round, "sites": 0}
    rows.append(row)
    rows.sort(key=lambda r: r["round"])
    return row


def apply_evaluation(rows: list[dict[str, Any]], model_round: int, fields: dict[str, Any], source: str) -> dict:
    row = row_for(rows, model_round)
    row.update(fields, evaluated_by=source)
    return row


def set_round_seconds(rows: list[dict[str, Any]], rnd: int, seconds: float) -> None:
    """Round `rnd` took `seconds` (exchange, aggregation, checkpoint); overhead = that minus the slowest
    site's own compute (its evaluation + training)."""
    row = row_for(rows, rnd)
    row["round_seconds"] = seconds
    if row.get("max_site_seconds") is not None:
        row["overhead_seconds"] = seconds - float(row["max_site_seconds"])
