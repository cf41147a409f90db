"""A run folder as the round loop writes it, without Flower: events, status, metrics, histograms,
run config, launch record and (optionally) final.pt. For the page and report tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mammo_fl.common.evaluation.metrics import score_histograms
from mammo_fl.server.histogram_store import save_round_histograms
from mammo_fl.server.launch_record import record_launch
from mammo_fl.server.operating_point import operating_point_columns, operating_point_record
from mammo_fl.server.pooled_metrics import pool_histograms
from mammo_fl.server.run_config import write_run_config
from mammo_fl.server.rundir import RunDir
from mammo_fl.server.settings import FederationSettings
from mammo_fl.server.site_events import report_replies
from mammo_fl.server.validate import Screened

SITES = ("hospital-a", "hospital-b", "hospital-c")
NODES = {"hospital-a": 101, "hospital-b": 202, "hospital-c": 303}


def site_scores(site: int, rnd: int, n: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Validation labels/scores that separate better each round."""
    rng = np.random.default_rng(seed + 100 * site + rnd)
    y = (np.arange(n) % 3 == 0).astype(int)
    s = np.clip(rng.normal(0.35 + (0.08 + 0.04 * rnd + 0.02 * site) * y, 0.15), 0, 1)
    return y, s


def eval_replies(rnd: int, bins: int = 1000) -> list[Screened]:
    out = []
    for i, site in enumerate(SITES):
        y, s = site_scores(i, rnd)
        neg, pos = score_histograms(y, s, bins)
        out.append(Screened(NODES[site], site, None, {"num-examples": int(y.size), "num-pos": int(y.sum()),
                                                       "hist-neg": neg.tolist(), "hist-pos": pos.tolist()}))
    return out


def make_run(root: Path, rounds: int = 3, finished: bool = True, model: Path | None = None) -> RunDir:
    settings = FederationSettings(out_dir=str(root), num_server_rounds=rounds, min_sites=2, launch_id="L1")
    rundir = RunDir(root, "L1")
    write_run_config(settings.to_run_config(), root / "run_config.toml")
    if model is not None:
        record_launch(root, launch_id="L1", initial_model=model, app_dir=Path(__file__).parent, config_file=None,
                      overrides=["max-steps=2"], resume=False)
    rundir.set_status("running", run_id=7, first_round=1, rounds=rounds)
    rundir.event("started", run_id=7, first_round=1, rounds=rounds, strategy="fedavg", min_sites=2, weights=10,
                 fab_hash="ab" * 32)
    rows = []
    for rnd in range(1, rounds + 1):
        nodes = sorted(NODES.values())
        rundir.event("round_start", round=rnd, sites=3, attempt=0, nodes=nodes)
        train = [Screened(NODES[s], s, None, {"num-examples": 40 + 10 * i}) for i, s in enumerate(SITES)]
        if rnd == 2:
            rundir.event("site_rejected", round=2, kind="train", site="hospital-c", node=303,
                         reason="weight 'top.0.weight' has 3 NaN/Inf value(s)")
            train = train[:2]
        report_replies(rundir, rnd, "train", train)
        rundir.event("evaluate_start", round=rnd, nodes=nodes)
        replies = eval_replies(rnd)
        report_replies(rundir, rnd, "evaluate", replies)
        summary = pool_histograms(replies, 1000, settings.operating_target())
        row = {"round": rnd, "pooled_auc": summary.pooled_auc, "sites": len(train), "eval_sites": 3,
               "n_pos": summary.n_pos, "n_neg": summary.n_neg, "train_loss": 0.5 / rnd, "round_seconds": 30.0,
               "site_names": ",".join(t.site for t in train),
               # one message per round: the next round's replies (or the final evaluation) scored this model
               "evaluated_by": f"round {rnd + 1}" if rnd < rounds else "final"}
        row.update({f"auc_{k}": v for k, v in summary.site_auc.items()})
        row.update(operating_point_columns(summary))
        save_round_histograms(root, rnd, summary.site_hists)
        rows.append(row)
        rundir.write_rows(rows)
        rundir.event("round_end", **row)
        if finished and rnd == rounds and model is not None:
            from mammo_fl.server.global_model import GlobalModel

            GlobalModel.from_checkpoint(model).save(rundir.final, {"federation": {"round": rnd, "run_id": 7}},
                                                    {"operating_point": operating_point_record(row, settings)})
    rundir.event("site_missing", round=rounds, kind="evaluate", node=404, reason="site disconnected")
    if finished:
        rundir.set_status("completed", run_id=7, rounds=rounds, final=str(rundir.final))
        rundir.event("done", rounds=rounds)
    return rundir
