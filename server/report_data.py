"""Everything the run report shows, gathered from a finished (or failed) run folder.

Sources: metrics.json/metrics.csv (per-round figures), histograms.npz (per-round, per-site score
histograms: confidence intervals, ROC, TP/FN/TN/FP at the operating point), events.jsonl (site
names, examples, rejected and dropped sites, Flower's FAB hash), launches.jsonl (initial model,
settings sources, app hash, versions), run_config.toml (settings) and final.pt (provenance).
"""

from __future__ import annotations

import csv
import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mammo_fl.common.evaluation.metrics import (
    RocCurve,
    auc_from_histograms,
    bootstrap_auc_ci_from_histograms,
    roc_from_histograms,
)
from mammo_fl.common.evaluation.operating_point import Confusion, confusion_at
from mammo_fl.common.utils.errors import DataError
from mammo_fl.server.histogram_store import SiteHistograms, load_histograms
from mammo_fl.server.launch_record import file_sha256, load_launches
from mammo_fl.server.settings import FederationSettings

Interval = tuple[float, float]
NAN_CI: Interval = (math.nan, math.nan)


@dataclass
class AucWithCi:
    auc: float
    ci: Interval = NAN_CI


@dataclass
class RoundFigures:
    round: int
    pooled: AucWithCi
    sites: dict[str, AucWithCi]
    threshold: float | None
    sens: float | None
    spec: float | None
    n_sites: int | None  # sites whose histograms this model's evaluation pooled
    evaluated_by: str | None = None  # "round r+1" / "final" (one message per round); None in older runs


@dataclass
class SiteFigures:
    name: str
    train_examples: int | None
    val_pos: int | None
    val_neg: int | None
    auc: AucWithCi | None
    counts: Confusion | None  # at the final operating point
    sens: float | None
    spec: float | None


@dataclass
class FinalModel:
    path: Path
    sha256: str
    size: int
    provenance: dict[str, Any]
    operating_point: dict[str, Any]


@dataclass
class ReportData:
    run: str
    root: Path
    status: dict[str, Any]
    target: str
    rounds: list[RoundFigures]
    final_row: dict[str, Any]
    sites: list[SiteFigures]
    pooled_counts: Confusion | None
    roc: RocCurve | None
    site_rocs: dict[str, RocCurve]
    problems: list[dict[str, Any]]
    settings: list[tuple[str, Any, bool]]  # key, value, differs from the default
    launches: list[dict[str, Any]]
    fab_hashes: list[str]
    final: FinalModel | None
    has_histograms: bool
    bootstrap: int
    notes: list[str] = field(default_factory=list)


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(path, f"unreadable ({exc})") from None


def _events(root: Path) -> list[dict[str, Any]]:
    path = root / "events.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a half-written last line of a killed run
    return out


def _num(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


_TEXT_COLUMNS = ("site_names", "evaluated_by", "wire")


def load_rows(root: Path) -> list[dict[str, Any]]:
    """Per-round rows: metrics.json, else metrics.csv; a folder with neither is not a run folder."""
    rows = _json(root / "metrics.json")
    if isinstance(rows, list) and rows:
        return rows
    csv_path = root / "metrics.csv"
    if csv_path.exists():
        with open(csv_path, newline="", encoding="utf-8") as fh:
            return [{k: (v if k in _TEXT_COLUMNS else _num(v)) for k, v in r.items()} for r in csv.DictReader(fh)]
    raise DataError(root, "no metrics.json or metrics.csv: not a mammo-server run folder, or no round finished")


def _ci(neg: Any, pos: Any, n: int, seed: int) -> AucWithCi:
    return AucWithCi(auc_from_histograms(neg, pos), bootstrap_auc_ci_from_histograms(neg, pos, n=n, seed=seed))


def _round_figures(row: dict[str, Any], hists: SiteHistograms | None, n: int, seed: int) -> RoundFigures:
    sites: dict[str, AucWithCi] = {}
    pooled = AucWithCi(_num(row.get("pooled_auc")) or math.nan)
    if hists:
        for site, (neg, pos) in sorted(hists.items()):
            sites[site] = _ci(neg, pos, n, seed)
        pooled = _ci(sum(h[0] for h in hists.values()), sum(h[1] for h in hists.values()), n, seed)
    else:
        for key, value in row.items():
            if key.startswith("auc_"):
                sites[key[4:]] = AucWithCi(_num(value) or math.nan)
    # the AUC's site count: eval_sites (rows of one-message rounds also count training sites in `sites`)
    n_sites = _num(row.get("eval_sites")) if _num(row.get("eval_sites")) is not None else _num(row.get("sites"))
    evaluated_by = row.get("evaluated_by")
    return RoundFigures(int(row["round"]), pooled, sites, _num(row.get("threshold")), _num(row.get("sens")),
                        _num(row.get("spec")), int(n_sites) if n_sites is not None else None,
                        str(evaluated_by) if isinstance(evaluated_by, str) and evaluated_by else None)


def _train_examples(events: list[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for ev in events:
        if ev.get("event") == "site_reply" and ev.get("kind") == "train":
            out[str(ev["site"])] = int(ev.get("examples", 0))
    return out


def _problems(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rejected and dropped sites, retried rounds and failures, in order."""
    keep = ("site_rejected", "site_missing", "round_retry", "failed")
    out = []
    for ev in events:
        if ev.get("event") in keep:
            who = ev.get("site") or (f"node-{ev['node']}" if "node" in ev else "")
            reason = ev.get("reason") or (f"only {ev.get('valid')} valid update(s), {ev.get('need')} required"
                                          if ev.get("event") == "round_retry" else "")
            out.append({"time": ev.get("time"), "event": ev["event"], "round": ev.get("round"),
                        "kind": ev.get("kind", ""), "site": who, "reason": reason})
    return out


def _settings(root: Path) -> tuple[list[tuple[str, Any, bool]], str]:
    path = root / "run_config.toml"
    try:
        config = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return [], "unknown (no run_config.toml)"
    except tomllib.TOMLDecodeError as exc:
        raise DataError(path, f"invalid TOML: {exc}") from None
    defaults = FederationSettings().to_run_config()
    rows = [(k, v, k in defaults and defaults[k] != v) for k, v in config.items()]
    try:
        target = FederationSettings.from_run_config(config).operating_target().describe()
    except Exception as exc:  # noqa: BLE001 - show the settings anyway
        target = f"unknown ({exc})"
    return rows, target


def _final_model(root: Path) -> FinalModel | None:
    path = root / "final.pt"
    if not path.exists():
        return None
    from mammo_fl.common.models.checkpoint import read_checkpoint_meta

    meta = read_checkpoint_meta(path)
    return FinalModel(path, file_sha256(path), path.stat().st_size, meta.get("provenance", {}),
                      (meta.get("metrics") or {}).get("operating_point") or {})


def _site_figures(final: RoundFigures, hists: SiteHistograms | None, row: dict[str, Any],
                  examples: dict[str, int]) -> tuple[list[SiteFigures], Confusion | None]:
    threshold = final.threshold
    out, pooled = [], None
    names = sorted(set(final.sites) | set(hists or {}) | set(examples))
    for name in names:
        neg_pos = (hists or {}).get(name)
        counts = confusion_at(*neg_pos, threshold) if neg_pos is not None and threshold is not None else None
        if counts is not None:
            pooled = counts if pooled is None else pooled + counts
        out.append(SiteFigures(
            name=name, train_examples=examples.get(name),
            val_pos=int(neg_pos[1].sum()) if neg_pos is not None else None,
            val_neg=int(neg_pos[0].sum()) if neg_pos is not None else None,
            auc=final.sites.get(name),
            counts=counts,
            sens=counts.sens if counts else _num(row.get(f"sens_{name}")),
            spec=counts.spec if counts else _num(row.get(f"spec_{name}")),
        ))
    return out, pooled


def gather(root: Path, bootstrap: int = 2000, seed: int = 0) -> ReportData:
    """The report's content for run folder `root` (one-line DataError when it is not a run folder)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, "run folder not found")
    rows = load_rows(root)
    histograms = load_histograms(root)
    events = _events(root)
    rounds = [_round_figures(r, histograms.get(int(r["round"])), bootstrap, seed) for r in rows]
    # the newest evaluated model (a run that is still going has not scored its newest model yet)
    last = max((i for i, r in enumerate(rows) if r.get("evaluated_by") or _num(r.get("pooled_auc")) is not None),
               default=len(rows) - 1)
    final_row, final = rows[last], rounds[last]
    sites, pooled = _site_figures(final, histograms.get(final.round), final_row, _train_examples(events))
    final_hists = histograms.get(final.round) or {}
    roc = site_rocs = None
    if final_hists:
        neg = sum(h[0] for h in final_hists.values())
        pos = sum(h[1] for h in final_hists.values())
        roc = roc_from_histograms(neg, pos) if neg.sum() and pos.sum() else None
        site_rocs = {s: roc_from_histograms(n, p) for s, (n, p) in final_hists.items() if n.sum() and p.sum()}
    settings, target = _settings(root)
    data = ReportData(
        run=root.resolve().name, root=root.resolve(), status=_json(root / "status.json") or {}, target=target,
        rounds=rounds, final_row=final_row, sites=sites, pooled_counts=pooled, roc=roc, site_rocs=site_rocs or {},
        problems=_problems(events), settings=settings, launches=load_launches(root),
        fab_hashes=sorted({str(ev["fab_hash"]) for ev in events if ev.get("event") == "started" and ev.get("fab_hash")}),
        final=_final_model(root), has_histograms=bool(histograms), bootstrap=bootstrap,
    )
    if not histograms:
        data.notes.append("This run kept no score histograms (histograms.npz): no confidence intervals, ROC or "
                          "per-site counts; figures are those of metrics.json.")
    return data
