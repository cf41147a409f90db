"""The site's audit log: one hash-chained JSON line per reply the site sends to the coordinator.

Each entry holds what came in (the round's configuration, and the SHA-256 Flower gives the received
content) and everything that went out: every metric value (histograms included), the SHA-256 of the
weights, the size and the SHA-256 of the serialised reply (Flower's content-addressed object id of
the reply's RecordDict: a SHA-256 over its serialised records, the same id the coordinator computes
on what it received), and `prev_sha256`, the SHA-256 of the previous line. Editing, inserting or
deleting an entry breaks the chain at the next one (`mammo-client audit verify`); the newest entry
is only protected by recording the chain head elsewhere (`verify` prints it; `--head` checks it).
Each entry also names the SHA-256 of the app bundle that produced the reply (`app_sha256`; None
outside the app guard, e.g. simulation). An app bundle the site refused is logged too (status
"refused-app", kind "app").

Lines are written canonically (sorted keys, no spaces) under an exclusive file lock and fsync'ed:
the log must survive a crash right after a send. Entries written before the chain existed
("legacy", without prev_sha256) are reported as unprotected; the first chained entry links to them.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np

from mammo_fl.common.federation import protocol as P
from mammo_fl.common.utils.errors import DataError

AUDIT_FILE = "audit.jsonl"
AUDIT_VERSION = 2
GENESIS = "0" * 64  # prev_sha256 of the first entry of a log
# The only fields an entry has (tests check the log against this set).
AUDIT_FIELDS = ("v", "seq", "time", "site", "run_id", "round", "kind", "status", "received", "sent", "prev_sha256",
                "app_sha256")
# Set by the app guard (client/app_guard.py) in the `flwr-clientapp` process it approved.
APP_SHA256_ENV = "MAMMO_FL_APP_SHA256"


def running_app_sha256() -> str | None:
    return os.environ.get(APP_SHA256_ENV) or None


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def line_sha256(line: str) -> str:
    return hashlib.sha256(line.encode("utf-8")).hexdigest()


def canonical(entry: Mapping[str, Any]) -> str:
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _jsonable(value: Any) -> Any:
    """Record values -> JSON (bytes as hex, numpy scalars as Python numbers)."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _record(records: Mapping[str, Any], name: str) -> dict[str, Any]:
    return {k: _jsonable(v) for k, v in records[name].items()} if name in records else {}


def describe_reply(reply: Any) -> dict[str, Any]:
    """Everything that leaves the site in `reply` (a RecordDict), as JSON."""
    site = _record(reply.config_records, P.SITE)
    sent: dict[str, Any] = {
        "sha256": reply.object_id,
        "bytes": P.recorddict_nbytes(reply),
        "metrics": _record(reply.metric_records, P.METRICS),
        "eval": _record(reply.metric_records, P.EVAL),  # the histograms of the received model
        "wire": _record(reply.config_records, P.WIRE),  # how the packed update below decodes
        "site_record": site,
        "weights": 0,
        "weights_sha256": None,
    }
    if P.ARRAYS in reply.array_records:
        arrays = P.arrayrecord_to_numpy(reply.array_records[P.ARRAYS])
        sent.update(weights=len(arrays), weights_sha256=P.arrays_sha256(arrays))
    return sent


def build_entry(*, site: str, run_id: int, rnd: int, kind: str, received: Any, reply: Any) -> dict[str, Any]:
    """An entry without its chain fields (seq, prev_sha256)."""
    sent = describe_reply(reply)
    return {
        "v": AUDIT_VERSION, "time": utc_now(), "site": site, "run_id": int(run_id), "round": int(rnd),
        "kind": kind, "status": sent["site_record"].get("status", P.STATUS_ERROR),
        "received": {"sha256": received.object_id, "config": _record(received.config_records, P.CONFIG)},
        "sent": sent, "app_sha256": None,
    }


def refused_app_entry(*, site: str, run_id: int, rnd: int, kind: str, reason: str, app_sha256: str,
                      status: str) -> dict[str, Any]:
    """An app bundle the site refused: no work was done, only the refusal left (client/app_guard.py)."""
    return {
        "v": AUDIT_VERSION, "time": utc_now(), "site": site, "run_id": int(run_id), "round": int(rnd), "kind": kind,
        "status": status, "received": {"sha256": None, "config": {}},
        "sent": {"sha256": None, "bytes": len(reason.encode()), "metrics": {}, "eval": {}, "wire": {},
                 "site_record": {"status": status, "error": reason}, "weights": 0, "weights_sha256": None},
        "app_sha256": app_sha256,
    }


def _last_line(fh: IO[bytes]) -> bytes:
    """The last complete line of a file opened in binary mode (reads backwards, not the whole log)."""
    fh.seek(0, os.SEEK_END)
    end = fh.tell()
    pos, chunk = end, b""
    while pos > 0:
        step = min(65536, pos)
        pos -= step
        fh.seek(pos)
        chunk = fh.read(step) + chunk
        body = chunk.rstrip(b"\n")
        cut = body.rfind(b"\n")
        if cut >= 0:
            return body[cut + 1:]
    return chunk.rstrip(b"\n")


@contextmanager
def _locked(path: Path) -> Iterator[IO[bytes]]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # two clientapp processes of one site must not interleave the chain
        try:
            yield fh
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def append_entry(state_dir: Path, entry: dict[str, Any]) -> dict[str, Any]:
    """Chain `entry` to the log's last line and append it (fsync'ed); returns the entry as written."""
    path = Path(state_dir) / AUDIT_FILE
    with _locked(path) as fh:
        last = _last_line(fh)
        prev, seq = GENESIS, 1
        if last.strip():
            prev = hashlib.sha256(last).hexdigest()
            try:
                seq = int(json.loads(last).get("seq", 0)) + 1
            except (ValueError, AttributeError):
                seq = 1
        entry = {**entry, "seq": seq, "prev_sha256": prev}
        fh.seek(0, os.SEEK_END)
        fh.write((canonical(entry) + "\n").encode("utf-8"))
        fh.flush()
        os.fsync(fh.fileno())
    return entry


def append_reply(state_dir: Path, *, site: str, run_id: int, rnd: int, kind: str, received: Any,
                 reply: Any, app_sha256: str | None = None) -> dict[str, Any]:
    """Log one reply (called by the ClientApp handler just before it returns the reply)."""
    entry = build_entry(site=site, run_id=run_id, rnd=rnd, kind=kind, received=received, reply=reply)
    return append_entry(state_dir, {**entry, "app_sha256": app_sha256})


def read_lines(state_dir: Path) -> list[str]:
    """The log's lines (no trailing newline); a missing log is a DataError."""
    path = Path(state_dir) / AUDIT_FILE
    if not path.exists():
        raise DataError(path, "no audit log here (the site has not replied to a coordinator yet?)")
    return path.read_text(encoding="utf-8").split("\n")


def read_entries(state_dir: Path) -> list[dict[str, Any]]:
    """All entries of a site's audit log (none when there is no log); a corrupt line is a DataError naming it."""
    path = Path(state_dir) / AUDIT_FILE
    if not path.exists():
        return []
    entries = []
    for lineno, line in enumerate(read_lines(state_dir), 1):
        if not line.strip():
            continue
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise DataError(path, f"line {lineno} is not JSON ({exc.msg})") from None
    return entries
