"""One message's work at a site, as a request/response pair of plain headers and numpy arrays.

The same `run_request` serves the site worker (the request arrived over the local channel) and
the in-process path (simulation, or a site without a worker), so both do exactly the same work.
"""

from __future__ import annotations

import logging
import traceback
from collections import OrderedDict
from typing import Any

import numpy as np

from mammo_fl.client.policy import SitePolicy, check_registered_name, check_request
from mammo_fl.client.session import SiteSession
from mammo_fl.client.site import resolve_site
from mammo_fl.common.federation import protocol as P
from mammo_fl.common.federation import wire as W
from mammo_fl.common.federation.round_config import RoundConfig

MAX_SESSIONS = 4  # simulation: one actor may serve several virtual sites in turn
_SESSIONS: OrderedDict[str, SiteSession] = OrderedDict()


def session_for(node_config: dict[str, Any], run_config: dict[str, Any]) -> SiteSession:
    site = resolve_site(node_config, run_config)
    key = str(site.state_dir)
    sess = _SESSIONS.pop(key, None)
    if sess is None or sess.site != site:
        sess = SiteSession(site)
    _SESSIONS[key] = sess
    while len(_SESSIONS) > MAX_SESSIONS:
        _SESSIONS.popitem(last=False)
    return sess


def packed_from_request(meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> W.Packed:
    return W.Packed(str(meta["mode"]), str(meta["dtype"]),
                    arrays.get(P.FLOATS, np.zeros(0, np.float32)), arrays.get(P.INTS, np.zeros(0, np.int64)),
                    str(meta["layout"]), [int(e) for e in meta.get("exponents", [])],
                    arrays.get(P.SCALES, np.zeros(0, np.float32)))


def run_request(header: dict[str, Any], arrays: dict[str, np.ndarray],
                persist: bool = True) -> tuple[dict[str, Any], dict[str, np.ndarray], SiteSession | None]:
    """Do the work a request asks for -> (response header, response arrays, the session used).

    Errors become a response with status "error" and a path-free reason; the details go to the
    site's own client.log. With `persist=False` the caller writes the held model later
    (the worker does it after answering, off the round's critical path)."""
    from mammo_fl.client.app import log_locally, public_reason, round_of

    sess = None
    kind, rnd = str(header.get("kind")), round_of(dict(header.get("config") or {}))
    try:
        sess = session_for(dict(header["node_config"]), dict(header["run_config"]))
        rc = RoundConfig.from_record(header["config"])
        policy = SitePolicy.from_node_config(sess.site.node_config)
        check_registered_name(rc, sess.site.name)  # before any work: an impostor's request does nothing
        check_request(policy, rc)
        wire_meta = dict(header["wire"])
        packed = packed_from_request(wire_meta, arrays)
        result = sess.handle(kind, rc, packed, str(wire_meta.get("base", "")), str(wire_meta.get("target", "")),
                             min_per_class=policy.min_patients_per_class)
        if persist:
            sess.persist()
        if result.eval_refused is not None:  # the site trains, but sends no histogram: said on its console
            log_locally(sess.site.state_dir,
                        f"evaluate round {rnd} failed [{result.eval_refused.code}]: {result.eval_refused}")
        out: dict[str, Any] = {"status": result.status, "site": sess.site.name, "held": result.held,
                               "eval": result.eval_metrics, "train": result.train_metrics, "timings": result.timings,
                               "eval_error": result.eval_refused.code if result.eval_refused else None}
        out_arrays: dict[str, np.ndarray] = {}
        if result.update is not None:
            out["wire"] = {"mode": result.update.mode, "dtype": result.update.dtype, "layout": result.update.layout,
                           "exponents": list(result.update.exponents)}
            out_arrays = P.packed_arrays(result.update)
        return out, out_arrays, sess
    except Exception as exc:  # noqa: BLE001 - any failure becomes an error reply, never a dead round
        reason = public_reason(exc)
        state_dir = sess.site.state_dir if sess else None
        # "<kind> round N failed [code]: ..." is what the site's console picks up (client/site_console.py)
        log_locally(state_dir, f"{kind} round {rnd} failed [{reason}]: {exc}\n{traceback.format_exc()}")
        logging.getLogger("mammo.client").warning("%s failed: %s", kind, reason)
        return {"status": P.STATUS_ERROR, "error": reason, "site": sess.site.name if sess else ""}, {}, sess
