"""Screening site replies before anything is aggregated.

A reply is rejected (with the site named) when it is an error, lacks the expected records or
metric names, or carries an update that does not decode, or whose weights have missing/unexpected
keys, wrong shapes or dtypes, or NaN/Inf values. With registered sites (`names`: node id ->
registered name, server/site_nodes.py) a reply is attributed to the name its node's key is
registered under, and refused when the node is not registered or the reply declares another
site's name. Only accepted replies reach the strategy, so Flower's consistency check
(InconsistentMessageReplies, which would kill the run) never sees a bad one.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mammo_fl.common.federation import protocol as P
from mammo_fl.common.utils.errors import MammoError

_REFUSED_APP = re.compile(r"refused app ([0-9a-f]{64})")


@dataclass(frozen=True)
class ArraySpec:
    shape: tuple[int, ...]
    dtype: str


@dataclass
class Screened:
    node: int
    site: str
    arrays: dict[str, np.ndarray] | None  # TRAIN replies only
    metrics: dict[str, Any]


@dataclass
class Rejected:
    node: int
    site: str
    reason: str


def expected_specs(arrays: dict[str, np.ndarray], keys: list[str]) -> dict[str, ArraySpec]:
    return {k: ArraySpec(tuple(arrays[k].shape), str(arrays[k].dtype)) for k in keys}


def declared_site(reply: Any) -> str | None:
    """The site name a reply declares (None for Flower-level errors and replies without one)."""
    if not reply.has_error() and P.SITE in reply.content.config_records:
        name = reply.content.config_records[P.SITE].get("site")
        if isinstance(name, str) and name:
            return name
    return None


def site_of(reply: Any, node: int, names: dict[int, str] | None = None) -> str:
    """The registered name of the reply's node; in lab mode the declared name; else `node-<id>`."""
    if names is not None:
        return names.get(node, f"node-{node}")
    return declared_site(reply) or f"node-{node}"


def identity_problem(reply: Any, node: int, names: dict[int, str] | None) -> str | None:
    """Why a reply cannot be attributed to a registered site, or None (always None in lab mode)."""
    if names is None:
        return None
    registered = names.get(node)
    if registered is None:
        return "refused: its key belongs to no registered site (unknown or removed)"
    declared = declared_site(reply)
    if declared is not None and declared != registered:
        return f"refused: answered as {declared!r}, but its key is registered as {registered!r}"
    return None


def flower_error_reason(reply: Any) -> str:
    """One line for a Flower-level error reply (an app bundle a site refused is named by its hash)."""
    reason = str(reply.error.reason or "").strip()
    refused = _REFUSED_APP.search(reason)
    if refused:
        return f"refused app {refused.group(1)} (not on the site's approved list)"
    lines = reason.splitlines() or ["(no reason given)"]
    return f"Flower error: {lines[-1][:300]}"


def check_arrays(arrays: dict[str, np.ndarray], expected: dict[str, ArraySpec]) -> str | None:
    """Reason the weights are unacceptable, or None."""
    missing = sorted(set(expected) - set(arrays))
    if missing:
        return f"missing {len(missing)} weight(s), e.g. {missing[0]!r}"
    extra = sorted(set(arrays) - set(expected))
    if extra:
        return f"unexpected {len(extra)} weight(s), e.g. {extra[0]!r}"
    for key, spec in expected.items():
        arr = arrays[key]
        if tuple(arr.shape) != spec.shape:
            return f"weight {key!r} has shape {tuple(arr.shape)}, expected {spec.shape}"
        if str(arr.dtype) != spec.dtype:
            return f"weight {key!r} has dtype {arr.dtype}, expected {spec.dtype}"
        if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
            bad = int((~np.isfinite(arr)).sum())
            return f"weight {key!r} has {bad} NaN/Inf value(s)"
    return None


def check_metrics(metrics: dict[str, Any], names: tuple[str, ...]) -> str | None:
    if set(metrics) != set(names):
        return f"metric names {sorted(metrics)} differ from the expected {sorted(names)}"
    n = metrics.get("num-examples")
    if not isinstance(n, int) or n <= 0:
        return f"num-examples must be a positive integer, got {n!r}"
    for k, v in metrics.items():
        values = v if isinstance(v, list) else [v]
        if not all(np.isfinite(float(x)) for x in values):
            return f"metric {k!r} is NaN/Inf"
    return None


def site_error_reason(code: Any) -> str:
    if code == P.TOO_SMALL:
        return "too small to evaluate (the site sends no histogram below its minimum patients per class)"
    return f"site error {P.site_error_text(code)}"


@dataclass
class RoundReplies:
    """One round's replies, screened: training updates, evaluations, rejections, sites needing the full model."""

    train: list[Screened] = field(default_factory=list)
    evals: list[Screened] = field(default_factory=list)  # metrics = the evaluation record
    rejected_train: list[Rejected] = field(default_factory=list)
    rejected_eval: list[Rejected] = field(default_factory=list)
    need_full: list[int] = field(default_factory=list)
    held: dict[int, str] = field(default_factory=dict)  # node -> digest of the global model it now holds


def _refusal(reply: Any, node: int, site: str, names: dict[int, str] | None) -> Rejected | None:
    """A reply that is refused as a whole: an impostor, a Flower error, a site error."""
    problem = identity_problem(reply, node, names)
    if problem is not None:
        return Rejected(node, site, problem)
    if reply.has_error():
        return Rejected(node, site, flower_error_reason(reply))
    site_rec = reply.content.config_records.get(P.SITE)
    if site_rec is not None and site_rec.get("status") == P.STATUS_ERROR:
        return Rejected(node, site, site_error_reason(site_rec.get("error", "?")))
    return None


def _screen_eval(content: Any, node: int, site: str) -> Screened | Rejected:
    site_rec = content.config_records.get(P.SITE) or {}
    if site_rec.get("eval-error"):  # the site trained, but sends no histogram (e.g. too small)
        return Rejected(node, site, site_error_reason(site_rec.get("eval-error")))
    if P.EVAL not in content.metric_records:
        return Rejected(node, site, "reply has no evaluation")
    metrics = dict(content.metric_records[P.EVAL])
    reason = check_metrics(metrics, P.EVAL_METRICS)
    return Rejected(node, site, reason) if reason else Screened(node, site, None, metrics)


def _screen_train(content: Any, node: int, site: str, expected: dict[str, ArraySpec],
                  decode: Callable[[Any], dict[str, np.ndarray]]) -> Screened | Rejected:
    if P.METRICS not in content.metric_records:
        return Rejected(node, site, "reply has no metrics")
    metrics = dict(content.metric_records[P.METRICS])
    reason = check_metrics(metrics, P.TRAIN_METRICS)
    if reason is not None:
        return Rejected(node, site, reason)
    try:
        arrays = decode(content)
    except MammoError as exc:
        return Rejected(node, site, f"update not decodable: {exc}")
    reason = check_arrays(arrays, expected)
    return Rejected(node, site, reason) if reason else Screened(node, site, arrays, metrics)


def screen(replies: dict[int, Any], *, train: bool, evaluate: bool, expected: dict[str, ArraySpec] | None = None,
           decode: Callable[[Any], dict[str, np.ndarray]] | None = None,
           names: dict[int, str] | None = None) -> RoundReplies:
    """Split replies into accepted parts (decoded) and rejections (with a one-line reason).

    The evaluation and the update of one reply are screened apart: a site whose update is bad
    (e.g. NaN after training) still contributes the evaluation it did before training.
    `names` (node id -> registered site) switches attribution from declared to registered names;
    a refused reply counts for nothing, not even the model digest it claims to hold."""
    out = RoundReplies()
    for node, reply in sorted(replies.items()):
        site = site_of(reply, node, names)
        failed = _refusal(reply, node, site, names)
        if failed is not None:
            (out.rejected_train if train else out.rejected_eval).append(failed)
            continue
        site_rec = reply.content.config_records.get(P.SITE) or {}
        if site_rec.get("status") == P.STATUS_NEED_FULL:
            out.need_full.append(node)
            continue
        out.held[node] = str(site_rec.get("held", ""))
        if evaluate:
            got = _screen_eval(reply.content, node, site)
            (out.evals if isinstance(got, Screened) else out.rejected_eval).append(got)
        if train:
            got = _screen_train(reply.content, node, site, expected or {}, decode or _no_decode)
            (out.train if isinstance(got, Screened) else out.rejected_train).append(got)
    return out


def _no_decode(content: Any) -> dict[str, np.ndarray]:
    raise MammoError("no decoder for the update")
