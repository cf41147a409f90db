"""The coordinator's round loop (runs inside the ServerApp process).

Per round: wait (bounded) for `min-sites` sites -> send the global model for local fine-tuning ->
screen replies (errors, NaN/Inf, wrong keys/shapes; update norms and num-examples, server/safeguards.py;
the site is named) -> aggregate with the configured strategy (+ DP noise; never a non-finite model) ->
federated evaluation of the new global model (pooled histograms) -> checkpoint, metrics, strategy and
safeguard state, then the resume marker. A round with too few valid
updates is retried; a run that cannot make progress fails with a one-line reason.
"""

from __future__ import annotations

import hashlib
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mammo_fl.common.federation import protocol as P
from mammo_fl.common.federation.round_config import RoundConfig
from mammo_fl.common.utils.errors import ConfigError, MammoError
from mammo_fl.server.pooled_metrics import pool_histograms
from mammo_fl.server.exchange import Collected, SitesUnavailable, exchange, online_nodes, wait_for_sites
from mammo_fl.server.global_model import GlobalModel
from mammo_fl.server.rundir import RunDir
from mammo_fl.server.safeguards import Safeguards
from mammo_fl.server.settings import FederationSettings
from mammo_fl.server.strategy import build_strategy, load_strategy_state, save_strategy_state
from mammo_fl.server.validate import Rejected, Screened, expected_specs, screen

LOG = logging.getLogger("mammo.server")


def _log(msg: str, *args: Any) -> None:
    """Into Flower's run log (`flwr log`, RUNDIR/flower.log) as well as Python logging."""
    try:
        from flwr.common.logger import log

        log(logging.INFO, msg, *args)
    except ImportError:  # pragma: no cover
        LOG.info(msg, *args)


@dataclass
class RoundContext:
    """What one launch of the round loop works with."""

    grid: Any
    settings: FederationSettings
    rundir: RunDir
    run_id: int
    model: GlobalModel
    strategy: Any
    fed_id: str
    guards: Safeguards
    started: bool = False  # a training round of this launch has started


def federation_id(out_dir: str) -> str:
    """Stable across --resume (new Flower run id): sites key their FedBN state on it."""
    return hashlib.sha256(str(Path(out_dir).resolve()).encode()).hexdigest()[:12]


def run_round_loop(grid: Any, settings: FederationSettings, run_id: int) -> None:
    """The coordinator's whole run: rounds, checkpoints, status; a failure is recorded, then raised."""
    if not settings.out_dir:
        raise ConfigError("run config out-dir is empty: the coordinator needs a run folder")
    rundir = RunDir(settings.out_dir, settings.launch_id)
    rundir.lock()
    try:
        _run(grid, settings, rundir, run_id)
    except Exception as exc:
        reason = str(exc) if isinstance(exc, MammoError) else f"{type(exc).__name__}: {exc}"
        rundir.event("failed", reason=reason)
        rundir.set_status("failed", reason=reason, run_id=run_id)
        raise


def _run(grid: Any, s: FederationSettings, rundir: RunDir, run_id: int) -> None:
    strategy = build_strategy(s)
    state = rundir.load_state() if s.resume else None
    rows: list[dict[str, Any]] = []
    if state is not None:
        if state.get("strategy") != s.strategy:
            raise ConfigError(f"cannot resume a {state.get('strategy')} run with strategy {s.strategy}")
        model = GlobalModel.from_checkpoint(rundir.root / state["checkpoint"])
        restored = load_strategy_state(strategy, rundir.strategy_file)
        guards = Safeguards.open(s, rundir, resume=True)  # join registry, privacy ledger (issue 12)
        done = int(state["completed_round"])
        rows = [r for r in rundir.load_rows() if r["round"] <= done]
        rundir.event("resumed", completed_round=done, strategy_arrays=restored, run_id=run_id, **guards.restored())
        _log("Resuming after round %d (%d strategy arrays restored)", done, restored)
        first = done + 1
    else:
        if not s.initial_model:
            raise ConfigError("run config initial-model is empty: pass the whole-image checkpoint (--model)")
        model = GlobalModel.from_checkpoint(s.initial_model)
        guards = Safeguards.open(s, rundir, resume=False)
        for stale in (rundir.state_file, rundir.metrics_json):
            stale.unlink(missing_ok=True)
        first = 1
    ctx = RoundContext(grid, s, rundir, run_id, model, strategy, federation_id(s.out_dir), guards)
    rundir.set_status("running", run_id=run_id, first_round=first, rounds=s.num_server_rounds)
    rundir.event("started", run_id=run_id, first_round=first, rounds=s.num_server_rounds, strategy=s.strategy,
                 min_sites=s.min_sites, weights=len(model.arrays))
    if s.test_faults:
        rundir.event("test_faults", faults=s.test_faults)
        _log("TEST FAULTS injected at simulated sites: %s", s.test_faults)
    if first == 1 and s.evaluate_initial and not rows:
        _wait_for_round(ctx, 0, first_round=True)
        rows.append(_evaluation_row(ctx, 0, _evaluate(ctx, 0)))
        rundir.write_rows(rows)
        rundir.event("round_end", **rows[-1])
    for rnd in range(first, s.num_server_rounds + 1):
        row = _train_round(ctx, rnd)
        rows.append(row)
        provenance = {"federation": {"round": rnd, "strategy": s.strategy, "fedbn": s.fedbn,
                                     "sites": row["sites"], "run_id": run_id}}
        metrics = {k: v for k, v in row.items() if isinstance(v, (int, float))}
        model.save(rundir.round_checkpoint(rnd), provenance, metrics)
        save_strategy_state(strategy, rundir.strategy_file)
        guards.commit()
        rundir.write_rows(rows)
        rundir.commit_round(rnd, {"strategy": s.strategy, "run_id": run_id})
        rundir.event("round_end", **row)
    last = s.num_server_rounds
    shutil.copy2(rundir.round_checkpoint(last), rundir.final)
    rundir.set_status("completed", run_id=run_id, rounds=last, final=str(rundir.final))
    rundir.event("done", rounds=last)
    _log("Federation finished: %d rounds, final model %s", last, rundir.final)


def _round_config(ctx: RoundContext, rnd: int) -> Any:
    s = ctx.settings
    return RoundConfig(
        server_round=rnd,
        fed_id=ctx.fed_id,
        model_kind=ctx.model.kind,
        model_spec=ctx.model.model_spec,
        preprocessing=ctx.model.preprocessing,
        finetune=s.site_finetune(),
        val_fraction=s.val_fraction,
        fedbn=s.fedbn,
        device=s.device,
        num_threads=s.num_threads,
        tta=s.tta,
        hist_bins=s.hist_bins,
        **s.dp.round_fields(),
    ).to_record()


def _content(ctx: RoundContext, rnd: int) -> Any:
    from flwr.app import RecordDict

    return RecordDict({P.ARRAYS: P.numpy_to_arrayrecord(ctx.model.arrays), P.CONFIG: _round_config(ctx, rnd)})


def _report_missing(ctx: RoundContext, rnd: int, kind: str, col: Collected) -> None:
    for node in col.timed_out:
        ctx.rundir.event("site_missing", round=rnd, kind=kind, node=node, reason="no reply before round-timeout")
    for node in col.left:
        ctx.rundir.event("site_missing", round=rnd, kind=kind, node=node, reason="site disconnected")


def _report_rejected(ctx: RoundContext, rnd: int, kind: str, rejected: list[Rejected]) -> None:
    for rej in rejected:
        ctx.rundir.event("site_rejected", round=rnd, kind=kind, site=rej.site, node=rej.node, reason=rej.reason)
        _log("Round %d %s: rejected %s: %s", rnd, kind, rej.site, rej.reason)


def _report_screened(ctx: RoundContext, rnd: int, screened: Any) -> None:
    for note in screened.notes:
        ctx.rundir.event("site_screened", round=rnd, kind="train", site=note.site, what=note.what, reason=note.detail)
        _log("Round %d train: %s %s: %s", rnd, note.what, note.site, note.detail)


def _train_round(ctx: RoundContext, rnd: int) -> dict[str, Any]:
    from flwr.app import MessageType

    s = ctx.settings
    expected = expected_specs(ctx.model.arrays, ctx.model.exchanged_keys(s.fedbn))
    t0 = time.monotonic()
    for attempt in range(s.round_retries + 1):
        nodes = _wait_for_round(ctx, rnd, first_round=not ctx.started)
        ctx.started = True
        ctx.rundir.event("round_start", round=rnd, sites=len(nodes), attempt=attempt)
        _log("Round %d: training at %d sites (attempt %d)", rnd, len(nodes), attempt + 1)
        content = _content(ctx, rnd)
        col = exchange(ctx.grid, nodes, MessageType.TRAIN, content, str(rnd), s.round_timeout)
        _report_missing(ctx, rnd, "train", col)
        ctx.guards.witness(rnd, "train", col.replies)  # reply SHA-256s, as in the sites' audit logs
        accepted, rejected = screen(col.replies, True, expected)
        accepted, dup = _dedupe_sites(accepted)
        screened = ctx.guards.screen_train(accepted, ctx.model.arrays)  # norms, num-examples (issue 12)
        accepted, rejected = screened.accepted, rejected + dup + screened.rejected
        _report_rejected(ctx, rnd, "train", rejected)
        _report_screened(ctx, rnd, screened)
        if len(accepted) >= s.min_sites:
            break
        ctx.rundir.event("round_retry", round=rnd, valid=len(accepted), need=s.min_sites, attempt=attempt)
    else:
        raise MammoError(
            f"round {rnd}: only {len(accepted)} valid site update(s), {s.min_sites} required, "
            f"after {s.round_retries + 1} attempt(s)"
        )
    train_seconds = col.seconds
    ctx.model.arrays = ctx.guards.aggregate(ctx.strategy, rnd, ctx.model.arrays, accepted)  # DP, finite check
    max_site = max(float(r.metrics["train-seconds"]) for r in accepted)
    total = sum(int(r.metrics["num-examples"]) for r in accepted)
    loss = sum(float(r.metrics["train-loss"]) * int(r.metrics["num-examples"]) for r in accepted) / total
    bytes_out = P.recorddict_nbytes(content)
    bytes_in = [P.recorddict_nbytes(col.replies[r.node].content) for r in accepted]
    t_eval = time.monotonic()
    evaluation = _evaluate(ctx, rnd)
    eval_seconds = time.monotonic() - t_eval
    row = _evaluation_row(ctx, rnd, evaluation)
    row.update(
        sites=len(accepted),
        train_loss=loss,
        round_seconds=time.monotonic() - t0,
        max_site_train_seconds=max_site,
        # the sum shows queueing: with fewer CPU/GPU slots than sites the train exchange takes ~sum/slots
        sum_site_train_seconds=sum(float(r.metrics["train-seconds"]) for r in accepted),
        overhead_seconds=train_seconds - max_site,
        evaluate_seconds=eval_seconds,
        bytes_to_each_site=bytes_out,
        bytes_from_sites=int(sum(bytes_in)),
        rejected=len(rejected),
        site_names=",".join(sorted(r.site for r in accepted)),
        **ctx.guards.screening_fields(screened, rejected),
    )
    return row


def _wait_for_round(ctx: RoundContext, rnd: int, first_round: bool) -> list[int]:
    """Online nodes once enough sites are connected (start-sites before the first round of a launch)."""
    s = ctx.settings
    need = max(s.start_sites, s.min_sites) if first_round else s.min_sites

    def on_wait(n: int) -> None:
        ctx.rundir.event("waiting", round=rnd, connected=n, need=need)

    if need > s.min_sites:
        try:
            return wait_for_sites(ctx.grid, need, s.site_wait_timeout, on_wait=on_wait)
        except SitesUnavailable:
            ctx.rundir.event("waiting", round=rnd, connected=len(online_nodes(ctx.grid)), need=s.min_sites)
            need = s.min_sites
    return wait_for_sites(ctx.grid, need, s.site_wait_timeout, on_wait=on_wait)


def _dedupe_sites(accepted: list[Screened]) -> tuple[list[Screened], list[Rejected]]:
    """Two nodes claiming one site name: keep the first, reject the other (names key the metrics).

    The kept replies come back sorted by site name."""
    seen: set[str] = set()
    keep, dup = [], []
    for rep in accepted:
        if rep.site in seen:
            dup.append(Rejected(rep.node, rep.site, "another node already answered as this site"))
        else:
            seen.add(rep.site)
            keep.append(rep)
    # Site-name order, not arrival order: float sums in the aggregation then do not depend on which
    # site answered first, so a seeded run gives bit-identical global models.
    return sorted(keep, key=lambda rep: rep.site), dup


def _evaluate(ctx: RoundContext, rnd: int) -> tuple[list[Screened], Any]:
    from flwr.app import MessageType

    s = ctx.settings
    nodes = online_nodes(ctx.grid)
    if not nodes:
        return [], pool_histograms([], s.hist_bins, s.threshold)
    col = exchange(ctx.grid, nodes, MessageType.EVALUATE, _content(ctx, rnd), f"eval-{rnd}", s.round_timeout)
    _report_missing(ctx, rnd, "evaluate", col)
    ctx.guards.witness(rnd, "evaluate", col.replies)
    accepted, rejected = screen(col.replies, False, None)
    accepted, dup = _dedupe_sites(accepted)
    accepted, bad_hists = ctx.guards.screen_eval(rnd, accepted)  # bins, counts, totals (issue 12)
    rejected = rejected + dup + bad_hists
    _report_rejected(ctx, rnd, "evaluate", rejected)
    return accepted, pool_histograms(accepted, s.hist_bins, s.threshold)


def _evaluation_row(ctx: RoundContext, rnd: int, evaluation: tuple[list[Screened], Any]) -> dict[str, Any]:
    accepted, summary = evaluation
    row: dict[str, Any] = {
        "round": rnd,
        "pooled_auc": summary.pooled_auc,
        "sites": len(accepted),
        "eval_sites": len(accepted),
        "sens": summary.sens,
        "spec": summary.spec,
        "threshold": ctx.settings.threshold,
        "n_pos": summary.n_pos,
        "n_neg": summary.n_neg,
    }
    for site, value in sorted(summary.site_auc.items()):
        row[f"auc_{site}"] = value
    row.update(ctx.guards.privacy_fields())  # epsilon, hist_epsilon (issue 12)
    _log(
        "Round %d: pooled AUC %s over %d site(s) (%d pos / %d neg)",
        rnd, "nan" if math.isnan(summary.pooled_auc) else f"{summary.pooled_auc:.4f}",
        len(accepted), summary.n_pos, summary.n_neg,
    )
    return row
