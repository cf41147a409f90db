"""The Flower ClientApp (Message API) of a hospital site.

Flower starts a fresh `flwr-clientapp` process for every message, so this module imports only
Flower and numpy: the work itself (torch, the preloaded images, the built model, the global model
the site holds) happens in the site worker that mammo-client runs next to the SuperNode, reached
over a local Unix socket (client/channel.py, client/worker.py). Without a worker (simulation)
the same work runs in this process (client/site_work.py). Before any work the site checks the
request against its own policy (client/policy.py: caps, its registered name). Every reply is
written to the site's audit log before it is returned. Failures become an error reply that names
the site and carries one fixed code of protocol.SITE_ERRORS (details, paths and values stay in
the site's own client.log), never a crash.
"""

from __future__ import annotations

import logging
import time
import traceback
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from mammo_fl.client.audit import append_reply, running_app_sha256, utc_now
from mammo_fl.common.federation import protocol as P
from mammo_fl.common.federation.wire import WireError
from mammo_fl.common.utils.errors import ConfigError, DataError

app = ClientApp()
SITE_LOG = "client.log"
WORKER_CONNECT_S = 60.0  # a restarting worker listens within seconds; after this the work is done here


@app.train()
def train(msg: Message, context: Context) -> Message:
    return handle(msg, context, "train")


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return handle(msg, context, "evaluate")


def public_reason(exc: BaseException) -> str:
    """What the coordinator may see: a fixed code (messages can hold paths, patient ids, labels)."""
    from mammo_fl.client.policy import SiteRefusal

    if isinstance(exc, SiteRefusal):
        return exc.code
    if isinstance(exc, DataError):
        return "data-error"
    if isinstance(exc, ConfigError | WireError):  # e.g. a model the site cannot reconstruct bit for bit
        return "bad-request"
    return "internal-error"


def log_locally(state_dir: Path | None, text: str) -> None:
    if state_dir is None:
        return
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        with open(state_dir / SITE_LOG, "a", encoding="utf-8") as fh:
            fh.write(f"{utc_now()} {text}\n")
    except OSError:
        pass


def _request(msg: Message, context: Context, kind: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The message as a request for the site's work (header + the packed arrays)."""
    content = msg.content
    cfg = content.config_records.get(P.CONFIG, ConfigRecord())
    meta = dict(content.config_records.get(P.WIRE, ConfigRecord()))
    packed = P.packed_from_records(content.array_records.get(P.ARRAYS), meta)
    header = {"kind": kind, "config": dict(cfg), "wire": {**meta, "mode": packed.mode},
              "node_config": dict(context.node_config), "run_config": dict(context.run_config)}
    return header, P.packed_arrays(packed)


def _do_work(header: dict[str, Any], arrays: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """At the site worker when mammo-client runs one (`worker-socket` in the node config), else here."""
    path = header["node_config"].get("worker-socket")
    if path:
        from mammo_fl.client.channel import ChannelError, call

        try:
            return call(Path(str(path)), header, arrays, connect_timeout_s=WORKER_CONNECT_S)
        except ChannelError as exc:  # worker restarting or gone: do the work here (slower, same result)
            logging.getLogger("mammo.client").warning("site worker unavailable (%s); working in-process", exc)
    from mammo_fl.client.site_work import run_request

    out, out_arrays, _ = run_request(header, arrays)
    return out, out_arrays


def _reply_content(out: dict[str, Any], arrays: dict[str, Any]) -> RecordDict:
    """The reply RecordDict from the work's response (what the coordinator receives)."""
    site = {"site": out["site"], "status": out["status"], "held": str(out.get("held", ""))}
    if out.get("eval_error"):  # trained, but no histogram (a fixed code, e.g. too small to evaluate)
        site["eval-error"] = str(out["eval_error"])
    content = RecordDict({P.SITE: ConfigRecord(site)})
    if out.get("eval") is not None:
        content[P.EVAL] = MetricRecord(out["eval"])
    if out.get("train") is not None:
        content[P.METRICS] = MetricRecord(out["train"])
    if out.get("wire") is not None:
        from mammo_fl.client.site_work import packed_from_request

        record, meta = P.packed_to_records(packed_from_request(out["wire"], arrays))
        content[P.ARRAYS] = record
        content[P.WIRE] = ConfigRecord(meta)
    return content


def handle(msg: Message, context: Context, kind: str) -> Message:
    site_name = str(dict(context.node_config).get("site", f"node-{context.node_id}"))
    state_dir = None
    rnd = 0
    try:
        from mammo_fl.client.site import resolve_site

        site = resolve_site(dict(context.node_config), dict(context.run_config))
        site_name, state_dir = site.name, site.state_dir
        rnd = round_of(msg.content.config_records.get(P.CONFIG, ConfigRecord()))
        header, arrays = _request(msg, context, kind)
        out, out_arrays = _do_work(header, arrays)
        if out["status"] == P.STATUS_ERROR:
            raise _SiteFailed(str(out.get("error") or "internal-error"))
        out["site"] = out.get("site") or site_name
        if out["status"] == P.STATUS_OK and kind == "train":
            _maybe_delay(site, rnd)
        content = _reply_content(out, out_arrays)
    except Exception as exc:  # noqa: BLE001 - any failure becomes an error reply, never a dead round
        if isinstance(exc, _SiteFailed):  # a fixed code; the work logged the details where it failed
            reason = str(exc)
        else:
            reason = public_reason(exc)
            log_locally(state_dir, f"{kind} round {rnd} failed [{reason}]: {exc}\n{traceback.format_exc()}")
            logging.getLogger("mammo.client").warning("%s failed: %s", kind, reason)
        content = RecordDict(
            {P.SITE: ConfigRecord({"site": site_name, "status": P.STATUS_ERROR, "error": reason})}
        )
    if state_dir is not None:  # hash-chained entry: the request's config, every value sent, the reply's SHA-256
        append_reply(state_dir, site=site_name, run_id=int(context.run_id), rnd=rnd, kind=kind,
                     received=msg.content, reply=content, app_sha256=running_app_sha256())
    return Message(content, reply_to=msg)


class _SiteFailed(Exception):
    """The work failed at the site; its message is the fixed error code (details logged where it happened)."""


def round_of(cfg: Any) -> int:
    """The round number for the audit log, even when the rest of the request is refused."""
    try:
        return int(cfg.get("server-round", 0))
    except (TypeError, ValueError):
        return 0


HOLD_MAX_S = 1800.0


def _maybe_delay(site: Any, rnd: int) -> None:
    """Test-only: `test-fault = 'delay:SECONDS'` makes a site slow (to drop it mid-round);
    `hold:DIR` holds its round-r training reply until DIR/round-r exists (a test keeps a round open)."""
    fault = site.fault
    if fault.startswith("delay:"):
        time.sleep(float(fault.split(":", 1)[1]))
    elif fault.startswith("hold:"):
        release, deadline = Path(fault.split(":", 1)[1]) / f"round-{rnd}", time.monotonic() + HOLD_MAX_S
        while not release.exists() and time.monotonic() < deadline:
            time.sleep(0.2)


