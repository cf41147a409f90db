"""Checking a site's audit chain and saying, in plain words, what each entry records as having left the site."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from mammo_fl.client.audit import GENESIS, line_sha256

# Received-config keys worth a word (the model spec and preprocessing are long; they stay in the log).
SHOWN_CONFIG = ("local-epochs", "lr", "warmup-steps", "local-optimizer-state", "weight-decay", "batch-size",
                "max-steps", "augment", "proximal-mu", "keep-bn-statistics", "fedbn", "hist-bins", "tta", "evaluate",
                "train-layers", "wire-dtype", "dp-clip-norm", "dp-site-noise", "dp-histogram-noise")


@dataclass
class ChainReport:
    entries: list[dict[str, Any]] = field(default_factory=list)  # chained entries, in order
    legacy: int = 0  # lines written before the chain existed (not protected)
    problems: list[str] = field(default_factory=list)
    line_hashes: list[str] = field(default_factory=list)
    head: str = GENESIS  # SHA-256 of the last line: record it elsewhere to protect the newest entry

    @property
    def intact(self) -> bool:
        return not self.problems


def verify_chain(lines: list[str], expected_head: str | None = None) -> ChainReport:
    """Each chained line must name the SHA-256 of the line before it (the first: GENESIS)."""
    report = ChainReport()
    if lines and lines[-1] == "":
        lines = lines[:-1]  # the final newline
    prev, prev_seq, chained = GENESIS, 0, False
    for lineno, line in enumerate(lines, 1):
        digest = line_sha256(line)
        report.line_hashes.append(digest)
        try:
            entry = json.loads(line)
            if not isinstance(entry, dict):
                raise ValueError
        except ValueError:
            report.problems.append(f"line {lineno} is not a JSON entry (edited, or cut short by a crash)")
            prev, chained = digest, True
            continue
        if "prev_sha256" not in entry:
            if chained:
                report.problems.append(f"line {lineno} has no chain link after chained entries (inserted?)")
            report.legacy += 1
        else:
            if entry["prev_sha256"] != prev:
                what = "the start of the log" if lineno == 1 else f"line {lineno - 1}"
                report.problems.append(f"line {lineno}: its prev_sha256 does not match {what} "
                                       f"(an entry was edited, inserted or deleted)")
            if chained and entry.get("seq") != prev_seq + 1:
                report.problems.append(f"line {lineno}: sequence number {entry.get('seq')} follows {prev_seq}")
            prev_seq = int(entry.get("seq", 0) or 0)
            chained = True
            report.entries.append(entry)
        prev = digest
    report.head = prev
    if expected_head and expected_head not in report.line_hashes:
        report.problems.append(f"no line has the recorded head {expected_head[:16]}...: "
                               "that entry, or everything after an earlier one, was changed or removed")
    return report


def _short(digest: Any) -> str:
    return f"{str(digest)[:12]}..." if digest else "-"


def _size(n: Any) -> str:
    n = float(n or 0)
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{int(n)} bytes"


def _value(v: Any) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def describe_sent(sent: dict[str, Any]) -> str:
    """What left the site, in words (histograms summarised; their every count is in the log)."""
    parts = []
    if sent.get("weights"):
        wire = sent.get("wire") or {}
        how = f"{wire.get('mode')} {wire.get('dtype')}, " if wire else ""
        parts.append(f"a model update ({how}{sent['weights']} packed arrays, SHA-256 "
                     f"{_short(sent.get('weights_sha256'))})")
    for name in ("eval", "metrics"):  # eval: the received model's histograms; metrics: training's figures
        metrics = dict(sent.get(name) or {})
        neg, pos = metrics.pop("hist-neg", None), metrics.pop("hist-pos", None)
        if neg is not None and pos is not None:
            filled = sum(1 for a, b in zip(neg, pos, strict=False) if a or b)
            parts.append(f"validation-score histograms ({len(neg)} bins, {sum(neg)} negative and {sum(pos)} "
                         f"positive scores in {filled} non-empty bins)")
        if metrics:
            parts.append(", ".join(f"{k} = {_value(v)}" for k, v in sorted(metrics.items())))
    error = (sent.get("site_record") or {}).get("error")
    if error:
        parts.append(f"an error: {error}")
    return "; ".join(parts) or "nothing but the site's name"


def describe_entry(entry: dict[str, Any]) -> str:
    """Two lines: what left the site, and what the coordinator had asked for."""
    sent, received = entry.get("sent", {}), entry.get("received", {})
    head = (f"run {entry.get('run_id')}, round {entry.get('round')}, {entry.get('kind')} "
            f"({entry.get('time')}, {entry.get('status')}): sent {describe_sent(sent)}; "
            f"reply {_size(sent.get('bytes'))}, SHA-256 {_short(sent.get('sha256'))}")
    config = received.get("config", {})
    asked = ", ".join(f"{k} = {_value(config[k])}" for k in SHOWN_CONFIG if k in config)
    return f"{head}\n    asked: {asked or '-'} (request SHA-256 {_short(received.get('sha256'))})"
