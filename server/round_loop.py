"""The coordinator's round loop (runs inside the ServerApp process).

One message per site per round: wait (bounded) for `min-sites` sites -> send the global model
(full, or the delta against the model the site holds: server/downlink.py) to the nodes of
registered sites, each told the name its key is registered under -> each site scores it on its
validation split, then fine-tunes it, and replies with both -> screen replies (impostors, errors,
NaN/Inf, wrong keys/shapes; then, on the update as reconstructed from the wire, update norms and
num-examples and the evaluation histograms: server/safeguards.py; the site is named) -> aggregate
with the configured strategy (+ DP noise; never a non-finite model) -> checkpoint, metrics,
strategy and safeguard state, then the resume marker. The evaluation in round r's replies
is that of round r-1's model (pooled histograms, the operating point chosen on them); it is
attached to that model's row, histograms and checkpoint. The final model is evaluated by one more
message after the last round, and final.pt carries that evaluation's operating point. A round with
too few valid updates is retried; a run that cannot make progress fails with a one-line reason.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mammo_fl.common.federation import protocol as P
from mammo_fl.common.federation.round_config import RoundConfig
from mammo_fl.common.utils.errors import ConfigError, MammoError
from mammo_fl.server import round_rows as R
from mammo_fl.server.committer import Committer
from mammo_fl.server.downlink import Downlink
from mammo_fl.server.exchange import Collected, SitesUnavailable, exchange, online_nodes, wait_for_sites
from mammo_fl.server.global_model import GlobalModel
from mammo_fl.server.histogram_store import save_round_histograms
from mammo_fl.server.launch_record import fab_hash_of
from mammo_fl.server.pooled_metrics import EvalSummary, pool_histograms
from mammo_fl.server.rundir import RunDir
from mammo_fl.server.safeguards import Safeguards
from mammo_fl.server.settings import FederationSettings
from mammo_fl.server.site_events import report_replies
from mammo_fl.server.site_nodes import SiteIdentity
from mammo_fl.server.strategy import (
    build_strategy,
    load_strategy_state,
    save_strategy_state,
    strategy_snapshot,
)
from mammo_fl.server.validate import Rejected, RoundReplies, Screened, expected_specs, screen

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
    downlink: Downlink
    committer: Committer
    guards: Safeguards  # screening, DP aggregation, privacy ledger (server/safeguards.py)
    identity: SiteIdentity = SiteIdentity()  # registered node -> site names (empty path: lab mode)
    started: bool = False  # a training round of this launch has started


@dataclass
class Evaluation:
    """One model's evaluation: the accepted site histograms and what the pooled ones give."""

    accepted: list[Screened]
    summary: EvalSummary


def federation_id(out_dir: str) -> str:
    """Stable across --resume (new Flower run id): sites key their FedBN state on it."""
    return hashlib.sha256(str(Path(out_dir).resolve()).encode()).hexdigest()[:12]


def run_round_loop(grid: Any, settings: FederationSettings, run_id: int) -> None:
    """The coordinator's whole run: rounds, checkpoints, status; a failure is recorded, then raised."""
    if not settings.out_dir:
        raise ConfigError("run config out-dir is empty: the coordinator needs a run folder")
    rundir = RunDir(settings.out_dir, settings.launch_id)
    rundir.lock()
    committer = Committer()
    try:
        _run(grid, settings, rundir, run_id, committer)
    except Exception as exc:
        _settle(committer)
        reason = str(exc) if isinstance(exc, MammoError) else f"{type(exc).__name__}: {exc}"
        rundir.event("failed", reason=reason)
        rundir.set_status("failed", reason=reason, run_id=run_id)
        raise
    finally:
        committer.close()


def _settle(committer: Committer) -> None:
    """On a failure: let the rounds already committing finish (their own errors are secondary)."""
    try:
        committer.wait()
    except Exception:  # noqa: BLE001 - the run's failure is the one to report
        LOG.exception("a round commit failed as well")


def _run(grid: Any, s: FederationSettings, rundir: RunDir, run_id: int, committer: Committer) -> None:
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
    downlink = Downlink(model.arrays, model.exchanged_keys(s.fedbn, s.train_layers), s.wire_dtype)
    ctx = RoundContext(grid, s, rundir, run_id, model, strategy, federation_id(s.out_dir), downlink, committer, guards,
                       SiteIdentity(s.site_nodes))
    rundir.set_status("running", run_id=run_id, first_round=first, rounds=s.num_server_rounds)
    rundir.event("started", run_id=run_id, first_round=first, rounds=s.num_server_rounds, strategy=s.strategy,
                 min_sites=s.min_sites, weights=len(model.arrays), wire=s.wire_dtype, train_layers=s.train_layers,
                 fab_hash=fab_hash_of(grid))
    if s.test_faults:
        rundir.event("test_faults", faults=s.test_faults)
        _log("TEST FAULTS injected at simulated sites: %s", s.test_faults)
    for rnd in range(first, s.num_server_rounds + 1):
        # round r's sites first score the model they receive (round r-1's; round 0 = the initial model)
        evaluate = rnd > 1 or s.evaluate_initial
        row, evaluation, started = _train_round(ctx, rnd, evaluate)
        rows.append(row)
        fields = _attach_evaluation(ctx, rows, rnd - 1, evaluation, f"round {rnd}") if evaluation else None
        _commit(ctx, rnd, rows)
        # from the first message out until the next round can start (its commit goes on in the background;
        # the csv gets this figure with the next commit)
        R.set_round_seconds(rows, rnd, time.monotonic() - started)
        rundir.event("round_end", **row, evaluated_model=rnd - 1 if fields else None,
                     **{f"eval_{k}": v for k, v in (fields or {}).items()})
    last = s.num_server_rounds
    final_start = time.monotonic()
    evaluation = _final_evaluation(ctx, last)
    fields = _attach_evaluation(ctx, rows, last, evaluation, "final",
                                {"evaluate_seconds": time.monotonic() - final_start, **ctx.guards.privacy_fields()},
                                final=True)
    rundir.event("final_evaluation", model=last, **fields)
    committer.wait()
    rundir.write_rows(rows)
    rundir.set_status("completed", run_id=run_id, rounds=last, final=str(rundir.final))
    rundir.event("done", rounds=last)
    _log("Federation finished: %d rounds, final model %s", last, rundir.final)


def _attach_evaluation(ctx: RoundContext, rows: list[dict[str, Any]], model_round: int, evaluation: Evaluation,
                       source: str, extra: dict[str, Any] | None = None, final: bool = False) -> dict[str, Any]:
    """Give model `model_round` its evaluation: its metrics row (AUCs, operating point, per-site
    sens/spec, `evaluated_by`), its histograms in histograms.npz, and its checkpoint's metrics
    (round_r.pt; with `final`, final.pt as well). Written in the background, before the next commit."""
    fields = {**R.evaluation_fields(evaluation.accepted, evaluation.summary), **(extra or {})}
    row = R.apply_evaluation(rows, model_round, fields, source)
    metrics = R.checkpoint_metrics(row, ctx.settings) if model_round > 0 or final else None
    hists = dict(evaluation.summary.site_hists)
    rundir = ctx.rundir
    checkpoint = rundir.round_checkpoint(model_round)

    def write() -> None:
        from mammo_fl.common.models.checkpoint import update_checkpoint_metrics

        save_round_histograms(rundir.root, model_round, hists)
        if metrics is not None:
            update_checkpoint_metrics(checkpoint, metrics, copy_to=rundir.final if final else None)

    ctx.committer.submit(write)
    _log("%s: pooled AUC %s over %d site(s), evaluated by %s",
         "Initial model" if model_round == 0 else f"Round {model_round}'s model",
         _fmt_auc(evaluation.summary.pooled_auc), len(evaluation.accepted), source)
    return fields


def _commit(ctx: RoundContext, rnd: int, rows: list[dict[str, Any]]) -> None:
    """Checkpoint -> strategy state -> metrics -> state.json (the resume point): rundir's commit protocol,
    on a snapshot of this round's results, written in the background (server/committer.py)."""
    s = ctx.settings
    row = rows[-1]
    provenance = {"federation": {"round": rnd, "strategy": s.strategy, "fedbn": s.fedbn, "sites": row["sites"],
                                 "run_id": ctx.run_id, "wire": s.wire_dtype, "train_layers": s.train_layers}}
    metrics = R.checkpoint_metrics(row, s)  # the evaluation (operating point) is added when it arrives
    model = dataclasses.replace(ctx.model)  # the arrays dict is replaced, never mutated, by the next round
    moments = strategy_snapshot(ctx.strategy)
    table = [dict(r) for r in rows]
    guard_state = ctx.guards.state()  # join registry: the num-examples caps a resumed run keeps
    rundir = ctx.rundir

    def write() -> None:
        model.save(rundir.round_checkpoint(rnd), provenance, metrics)
        save_strategy_state(moments, rundir.strategy_file)
        ctx.guards.commit(guard_state)
        rundir.write_rows(table)
        rundir.commit_round(rnd, {"strategy": s.strategy, "run_id": ctx.run_id})

    ctx.committer.submit(write)


def _round_config(ctx: RoundContext, rnd: int, evaluate: bool = False, registered_site: str = "") -> Any:
    s = ctx.settings
    return RoundConfig(
        server_round=rnd,
        fed_id=ctx.fed_id,
        model_kind=ctx.model.kind,
        model_spec=ctx.model.model_spec,
        preprocessing=ctx.model.preprocessing,
        finetune=s.site_finetune(rnd),
        val_fraction=s.val_fraction,
        fedbn=s.fedbn,
        device=s.device,
        num_threads=s.num_threads,
        tta=s.tta,
        hist_bins=s.hist_bins,
        evaluate=evaluate,
        train_layers=s.train_layers,
        wire_dtype=s.wire_dtype,
        registered_site=registered_site,
        **s.dp.round_fields(),
    ).to_record()


def _configs(ctx: RoundContext, rnd: int, evaluate: bool) -> Any:
    """node id -> its round config, which names the site the node's key is registered under (so an
    impostor's own ClientApp refuses too); in lab mode one config for all."""
    names = ctx.identity.names()
    if not names:
        return _round_config(ctx, rnd, evaluate)
    return lambda node: _round_config(ctx, rnd, evaluate, names.get(node, ""))


def _registered_nodes(ctx: RoundContext, rnd: int, kind: str, nodes: list[int]) -> list[int]:
    """Nodes of registered sites; the others get nothing and are reported."""
    keep, refused = ctx.identity.split(nodes)
    for node in refused:
        ctx.rundir.event("site_rejected", round=rnd, kind=kind, site=f"node-{node}", node=node,
                         reason="refused: its key belongs to no registered site (unknown or removed)")
    return keep


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


@dataclass
class _Sent:
    col: Collected
    bytes_down: dict[int, int]  # node -> serialised bytes of what it was sent


def _needs_full(reply: Any) -> bool:
    if reply.has_error():
        return False
    rec = reply.content.config_records.get(P.SITE)
    return rec is not None and rec.get("status") == P.STATUS_NEED_FULL


def _send(ctx: RoundContext, nodes: list[int], message_type: str, config: Any, group: str) -> _Sent:
    """One exchange; a site that lacks the model a delta was made against is sent the full model at once."""
    s = ctx.settings
    contents = ctx.downlink.contents(nodes, config)
    sizes = _sizes(contents)
    col = exchange(ctx.grid, nodes, message_type, contents, group, s.round_timeout)
    again = [n for n, reply in col.replies.items() if _needs_full(reply)]
    if again:
        for n in again:
            del col.replies[n]
        full = ctx.downlink.contents(again, config, force_full=True)
        sizes.update({n: sizes[n] + size for n, size in _sizes(full).items()})
        more = exchange(ctx.grid, again, message_type, full, f"{group}-full", s.round_timeout)
        col.replies.update(more.replies)
        col.timed_out += more.timed_out
        col.left += more.left
        col.seconds += more.seconds
    return _Sent(col, sizes)


def _sizes(contents: dict[int, Any]) -> dict[int, int]:
    """Serialised size per node: the shared ArrayRecord is measured once per payload, the small
    per-node records (wire description, round config) per node."""
    from flwr.app import RecordDict

    by_record: dict[int, int] = {}
    out = {}
    for node, content in contents.items():
        record = content.array_records.get(P.ARRAYS)
        small = RecordDict({k: v for k, v in content.items() if k != P.ARRAYS})
        size = P.recorddict_nbytes(small)
        if record is not None:
            size += by_record.setdefault(id(record), P.recorddict_nbytes(RecordDict({P.ARRAYS: record})))
        out[node] = size
    return out


def _mean(values: list[int]) -> float:
    return float(sum(values) / len(values)) if values else 0.0


def _train_round(ctx: RoundContext, rnd: int,
                 evaluate: bool) -> tuple[dict[str, Any], Evaluation | None, float]:
    """(round r's training row, the evaluation of the model the sites received when asked, when the
    round's first message went out)."""
    from flwr.app import MessageType

    s = ctx.settings
    expected = expected_specs(ctx.downlink.arrays, ctx.downlink.exchanged)
    evals: dict[str, Screened] = {}
    started = None
    for attempt in range(s.round_retries + 1):
        nodes = _registered_nodes(ctx, rnd, "train", _wait_for_round(ctx, rnd, first_round=not ctx.started))
        ctx.started = True
        started = started if started is not None else time.monotonic()  # waiting for sites is not the round's cost
        ctx.rundir.event("round_start", round=rnd, sites=len(nodes), attempt=attempt, nodes=nodes)
        _log("Round %d: evaluating and training at %d sites (attempt %d)", rnd, len(nodes), attempt + 1)
        sent = _send(ctx, nodes, MessageType.TRAIN, _configs(ctx, rnd, evaluate), str(rnd))
        _report_missing(ctx, rnd, "train", sent.col)
        ctx.guards.witness(rnd, "train", sent.col.replies, ctx.identity.names())  # reply SHA-256s, as in the sites' audit logs
        got = screen(sent.col.replies, train=True, evaluate=evaluate, expected=expected,
                     decode=ctx.downlink.decode_update, names=ctx.identity.names())
        ctx.downlink.note(got.held)
        accepted, dup = _dedupe_sites(got.train)
        # norms of (reconstructed site model - global) and num-examples; a clip acts on the decoded fp32 arrays
        screened = ctx.guards.screen_train(accepted, ctx.downlink.arrays)
        accepted, rejected = screened.accepted, got.rejected_train + dup + screened.rejected
        _report_rejected(ctx, rnd, "train", rejected)
        _report_screened(ctx, rnd, screened)
        if evaluate:
            fresh = _accept_evals(ctx, rnd, got)
            report_replies(ctx.rundir, rnd - 1, "evaluate", fresh)  # the model they scored: round r-1's
            evals.update({e.site: e for e in fresh})
        report_replies(ctx.rundir, rnd, "train", accepted)
        if len(accepted) >= s.min_sites:
            break
        ctx.rundir.event("round_retry", round=rnd, valid=len(accepted), need=s.min_sites, attempt=attempt)
    else:
        raise MammoError(
            f"round {rnd}: only {len(accepted)} valid site update(s), {s.min_sites} required, "
            f"after {s.round_retries + 1} attempt(s)"
        )
    aggregated = ctx.guards.aggregate(ctx.strategy, rnd, ctx.downlink.arrays, accepted)  # DP, finite check
    ctx.model.arrays = ctx.downlink.publish(aggregated)
    bytes_up = [P.recorddict_nbytes(sent.col.replies[r.node].content) for r in accepted]
    eval_list = sorted(evals.values(), key=lambda e: e.site)
    row = R.train_row(rnd, accepted, eval_list, len(rejected),
                      _mean([sent.bytes_down[n] for n in nodes]), _mean(bytes_up), s.wire_dtype)
    row.update(ctx.guards.screening_fields(screened, rejected))
    row.update(ctx.guards.privacy_fields())  # epsilon, hist_epsilon spent up to this round's messages
    if not evaluate:
        return row, None, started
    return row, Evaluation(eval_list, pool_histograms(eval_list, s.hist_bins, s.operating_target())), started


def _accept_evals(ctx: RoundContext, rnd: int, got: RoundReplies) -> list[Screened]:
    """Consistent evaluations (bins, counts, totals: server/screening.py), one per site; the rest are reported."""
    accepted, dup = _dedupe_sites(got.evals)
    accepted, bad_hists = ctx.guards.screen_eval(rnd, accepted)  # also books a DP histogram release
    rejected = got.rejected_eval + dup + bad_hists
    _report_rejected(ctx, rnd, "evaluate", rejected)
    return accepted


def _final_evaluation(ctx: RoundContext, last: int) -> Evaluation:
    """One more message after the last round: every online registered site scores the final model."""
    from flwr.app import MessageType

    s = ctx.settings
    nodes = _registered_nodes(ctx, last, "evaluate", online_nodes(ctx.grid))
    if not nodes:
        return Evaluation([], pool_histograms([], s.hist_bins, s.operating_target()))
    ctx.rundir.event("evaluate_start", round=last, nodes=nodes)
    _log("Final model: evaluating at %d sites", len(nodes))
    sent = _send(ctx, nodes, MessageType.EVALUATE, _configs(ctx, last, True), f"eval-{last}")
    _report_missing(ctx, last, "evaluate", sent.col)
    ctx.guards.witness(last, "evaluate", sent.col.replies, ctx.identity.names())
    got = screen(sent.col.replies, train=False, evaluate=True, names=ctx.identity.names())
    ctx.downlink.note(got.held)
    accepted = _accept_evals(ctx, last, got)
    report_replies(ctx.rundir, last, "evaluate", accepted)
    return Evaluation(accepted, pool_histograms(accepted, s.hist_bins, s.operating_target()))


def _fmt_auc(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.4f}"


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
