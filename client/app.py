"""The Flower ClientApp (Message API) of a hospital site.

Flower starts a fresh `flwr-clientapp` process for every message, so this module imports only
Flower at load time; torch and the data stack are imported inside the handlers. Every reply is
written to the site's audit log before it is returned. Failures become an error reply that
names the site and a path-free cause (details stay in the site's own log), never a crash.
"""

from __future__ import annotations

import logging
import time
import traceback
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from mammo_fl.client.audit import append_reply, utc_now
from mammo_fl.common.federation import protocol as P
from mammo_fl.common.utils.errors import DataError, MammoError

app = ClientApp()
SITE_LOG = "client.log"


@app.train()
def train(msg: Message, context: Context) -> Message:
    return handle(msg, context, "train")


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return handle(msg, context, "evaluate")


def public_reason(exc: BaseException) -> str:
    """What the coordinator may see: no file paths (they can hold patient identifiers)."""
    if isinstance(exc, DataError):
        return f"DataError: {exc.cause}"
    if isinstance(exc, MammoError):
        return f"{type(exc).__name__}: {exc}"
    return f"{type(exc).__name__} (details in the site's {SITE_LOG})"


def log_locally(state_dir: Path | None, text: str) -> None:
    if state_dir is None:
        return
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        with open(state_dir / SITE_LOG, "a", encoding="utf-8") as fh:
            fh.write(f"{utc_now()} {text}\n")
    except OSError:
        pass


def _set_threads(site_nc: dict[str, Any], rc_threads: int) -> None:
    from mammo_fl.common.utils.device import set_cpu_threads

    set_cpu_threads(int(site_nc.get("num-threads", 0) or rc_threads or 0))


def handle(msg: Message, context: Context, kind: str) -> Message:
    from mammo_fl.client.local import local_evaluate, local_train
    from mammo_fl.common.federation.round_config import RoundConfig
    from mammo_fl.client.site import resolve_site

    site = None
    rnd = 0
    try:
        site = resolve_site(dict(context.node_config), dict(context.run_config))
        cfg = msg.content.config_records.get(P.CONFIG, ConfigRecord())
        rc = RoundConfig.from_record(cfg)
        rnd = rc.server_round
        _set_threads(site.node_config, rc.num_threads)
        arrays = P.arrayrecord_to_numpy(msg.content.array_records[P.ARRAYS])
        if kind == "train":
            weights, metrics = local_train(site, rc, arrays)
            _maybe_delay(site)
            content = RecordDict(
                {
                    P.ARRAYS: P.numpy_to_arrayrecord(weights),
                    P.METRICS: MetricRecord(metrics),
                    P.SITE: ConfigRecord({"site": site.name, "status": P.STATUS_OK}),
                }
            )
        else:
            metrics = local_evaluate(site, rc, arrays)
            content = RecordDict(
                {P.METRICS: MetricRecord(metrics), P.SITE: ConfigRecord({"site": site.name, "status": P.STATUS_OK})}
            )
    except Exception as exc:  # noqa: BLE001 - any failure becomes an error reply, never a dead round
        reason = public_reason(exc)
        log_locally(site.state_dir if site else None, f"{kind} round {rnd} failed: {exc}\n{traceback.format_exc()}")
        logging.getLogger("mammo.client").warning("%s failed: %s", kind, reason)
        name = site.name if site else str(dict(context.node_config).get("site", f"node-{context.node_id}"))
        content = RecordDict(
            {P.SITE: ConfigRecord({"site": name, "status": P.STATUS_ERROR, "error": reason})}
        )
    if site is not None:  # hash-chained entry: the request's config, every value sent, the reply's SHA-256
        append_reply(site.state_dir, site=site.name, run_id=int(context.run_id), rnd=rnd, kind=kind,
                     received=msg.content, reply=content)
    return Message(content, reply_to=msg)


def _maybe_delay(site: Any) -> None:
    """Test-only: `test-fault = 'delay:SECONDS'` makes a site slow (to drop it mid-round)."""
    fault = site.fault
    if fault.startswith("delay:"):
        time.sleep(float(fault.split(":", 1)[1]))


