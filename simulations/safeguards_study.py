"""The safeguards experiment (docs/federation.md): one faulty site, screening, robust strategies, DP.

    python -m mammo_fl.simulations.safeguards_study --out runs/safeguards [--arms clean,fedavg-attack,...]

Every arm is one `mammo-sim --preset quick` federated run at the grid's largest size (72 patients,
K = 3 virtual sites or `--sites K`, seed 0) with extra run-config keys; the attack arms make `site_02` send its
update x1000 from round 1 (`test-faults`). Writes OUT/safeguards.csv and prints the table:
pooled AUC = the coordinator's last-round AUC from the sites' summed histograms, federated AUC =
final.pt scored centrally on the same validation set, epsilon = the privacy spent at dp.delta.
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from pathlib import Path
from typing import Any

from mammo_fl.common.cli import run_cli

ATTACK = {"test-faults": "site_02=scale:1000", "min-sites": 2}  # a rejected site must not stop the round
NO_SCREENING = {"screening.norm-factor": 0.0, "screening.examples-factor": 0.0}
# DP arms keep BatchNorm at the sites (fedbn): its running statistics are not clipped into a private
# update (their change is ~40,000 in pixel units against ~1.2 for the weights); the clip norm is about
# the weights' update norm of one site in round 1 (norm_site_* of the clean-fedbn arm).
CLIP_NORM = 1.0
DP = {"fedbn": True, "dp.clip-norm": CLIP_NORM}

# name -> extra run-config keys of the federated arm
ARMS: dict[str, dict[str, Any]] = {
    "clean": {},
    "fedavg-attack-unscreened": {**ATTACK, **NO_SCREENING},
    "fedavg-attack-screened-clip": {**ATTACK},
    "fedavg-attack-screened-reject": {**ATTACK, "screening.action": "reject"},
    "fedavg-attack-screened-clip-2x": {**ATTACK, "screening.norm-factor": 2.0},
    "fedavg-attack-screened-clip-1x": {**ATTACK, "screening.norm-factor": 1.0},
    "fedmedian-attack-unscreened": {**ATTACK, **NO_SCREENING, "strategy": "fedmedian"},
    "fedtrimmedavg-attack-unscreened": {**ATTACK, **NO_SCREENING, "strategy": "fedtrimmedavg", "trimmed-beta": 0.34},
    "krum-attack-unscreened": {**ATTACK, **NO_SCREENING, "strategy": "krum", "krum-malicious": 1},
    # what a robust strategy costs by itself at 3 sites (no attack), next to what the attack costs it
    "fedmedian-clean": {"strategy": "fedmedian"},
    "fedtrimmedavg-clean": {"strategy": "fedtrimmedavg", "trimmed-beta": 0.34},
    "krum-clean": {"strategy": "krum", "krum-malicious": 1},
    "clean-fedbn": {"fedbn": True},
    "dp-0.001": {**DP, "dp.noise-multiplier": 0.001},
    "dp-0.01": {**DP, "dp.noise-multiplier": 0.01},
    "dp-0.1": {**DP, "dp.noise-multiplier": 0.1},
    "dp-1.0": {**DP, "dp.noise-multiplier": 1.0},
}
GRID = ["experiment.sizes=[72]", "experiment.seeds=[0]", "experiment.methods=['federated']"]
COLUMNS = ["arm", "sites", "strategy", "fedbn", "screening", "fault", "noise_multiplier", "epsilon", "delta", "pooled_auc",
           "federated_auc", "clipped_or_rejected", "status", "seconds"]


def _last_row(run_dir: Path) -> dict[str, str]:
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return {}
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return rows[-1] if rows else {}


def _read_table(path: Path) -> dict[str, dict[str, Any]]:
    if not path.is_file():
        return {}
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    numeric = ("noise_multiplier", "epsilon", "delta", "pooled_auc", "federated_auc")
    table = {}
    for r in rows:
        if r["arm"] in ARMS:
            sites = int(r.get("sites") or 3)  # tables written before --sites existed: all at 3 sites
            table[(r["arm"], sites)] = {**{k: (_float(v) if k in numeric else v) for k, v in r.items()}, "sites": sites}
    return table


def _float(text: Any) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def run_arm(name: str, sites: int, out: Path, cache_dir: Path | None, model: Path | None) -> dict[str, Any]:
    from mammo_fl.simulations.driver import run_simulation_study

    extra = ARMS[name]
    start = time.perf_counter()
    folder = out / (name if sites == 3 else f"{name}-k{sites}")
    results = run_simulation_study("quick", folder, overrides=[*GRID, f"experiment.k_sites=[{sites}]"], model=model,
                                   cache_dir=cache_dir, run_config=extra)
    fed = results[results["method"] == "federated"].iloc[0]
    last = _last_row(folder / "federated" / f"seed0_n72_k{sites}")
    from mammo_fl.server.safeguard_settings import ScreeningSettings

    factor = float(extra.get("screening.norm-factor", ScreeningSettings().norm_factor))
    screening = "off" if factor == 0 else f"{extra.get('screening.action', 'clip')} at {factor:g}x median"
    return {
        "arm": name, "sites": sites, "strategy": extra.get("strategy", "fedavg"), "fedbn": bool(extra.get("fedbn", False)),
        "screening": screening,
        "fault": extra.get("test-faults", ""), "noise_multiplier": extra.get("dp.noise-multiplier", 0.0),
        "epsilon": _float(last.get("epsilon")), "delta": _float(last.get("dp_delta")),
        "pooled_auc": _float(last.get("pooled_auc")), "federated_auc": float(fed["auc"]),
        "clipped_or_rejected": " | ".join(x for x in (last.get("clipped_sites"), last.get("rejected_sites")) if x),
        "status": fed["status"], "seconds": round(time.perf_counter() - start, 1),
    }


def _order(key: tuple[str, int]) -> tuple[int, int]:
    """Table order: by site count, then as the arms are listed."""
    return key[1], list(ARMS).index(key[0])


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "-" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def _main(argv: list[str] | None) -> int:
    p = argparse.ArgumentParser(prog="python -m mammo_fl.simulations.safeguards_study",
                                description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated subset of: {', '.join(ARMS)}")
    p.add_argument("--model", type=Path, default=None, help="source model (default: mammo-sim's cached build)")
    p.add_argument("--cache-dir", type=Path, default=None)
    p.add_argument("--sites", type=int, default=3, help="virtual sites K (the faulty one is site_02)")
    args = p.parse_args(argv)
    from mammo_fl.simulations.cli import _interrupt_on_sigterm

    _interrupt_on_sigterm()  # SIGTERM shuts Ray down instead of orphaning it
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        from mammo_fl.common.utils.errors import ConfigError

        raise ConfigError(f"unknown arm(s) {', '.join(unknown)}; choose from {', '.join(ARMS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    table = args.out / "safeguards.csv"
    done = _read_table(table)  # arms of earlier invocations stay in the table
    if args.sites < 3:
        from mammo_fl.common.utils.errors import ConfigError

        raise ConfigError(f"--sites {args.sites}: the attack arms need at least 3 sites (site_02 is the faulty one)")
    for name in arms:
        done[(name, args.sites)] = run_arm(name, args.sites, args.out, args.cache_dir, args.model)
        rows = [done[k] for k in sorted(done, key=_order)]
        with open(table, "w", newline="") as fh:  # rewritten after every arm: a killed study keeps its rows
            writer = csv.DictWriter(fh, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
    rows = [done[k] for k in sorted(done, key=_order)]
    print("| " + " | ".join(COLUMNS[:-1]) + " |")
    print("|" + "---|" * (len(COLUMNS) - 1))
    for row in rows:
        print("| " + " | ".join(_fmt(row[c])[:160] for c in COLUMNS[:-1]) + " |")
    print(f"\nresults: {table}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
