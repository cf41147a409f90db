"""The site's audit log: one JSON line per message the site sends to the coordinator.

A hospital can show exactly what left the building: when, for which round, what kind of
message, how many bytes, a SHA-256 of the weights, the *names* of the metrics (never
their per-image content, which does not exist in a reply anyway) and the SHA-256 of the app
bundle that produced the reply. An app bundle the site refused is logged too (status
"refused-app", kind "app").
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mammo_fl.common.utils.errors import DataError

AUDIT_FILE = "audit.jsonl"
# The only fields an audit entry may have (tests check the log against this set).
AUDIT_FIELDS = ("time", "site", "run_id", "round", "kind", "bytes", "weights_sha256", "metric_names", "status",
                "app_sha256")
# Set by the app guard (client/app_guard.py) in the `flwr-clientapp` process it approved.
APP_SHA256_ENV = "MAMMO_FL_APP_SHA256"


@dataclass(frozen=True)
class AuditEntry:
    time: str  # UTC, ISO 8601
    site: str
    run_id: int
    round: int
    kind: str  # train | evaluate
    bytes: int  # serialised size of the reply
    weights_sha256: str | None  # None when the reply carries no weights
    metric_names: list[str]
    status: str  # ok | error | refused-app
    app_sha256: str | None = None  # the app bundle that ran (None outside the guard, e.g. simulation)


def running_app_sha256() -> str | None:
    return os.environ.get(APP_SHA256_ENV) or None


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def append_entry(state_dir: Path, entry: AuditEntry) -> Path:
    """Append one entry (an fsync'ed line: the log must survive a crash right after a send)."""
    path = Path(state_dir) / AUDIT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(asdict(entry), sort_keys=True) + "\n"
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line)
        fh.flush()
        os.fsync(fh.fileno())
    return path


def read_entries(state_dir: Path) -> list[dict[str, Any]]:
    """All entries of a site's audit log; a corrupt line is a DataError naming the line."""
    path = Path(state_dir) / AUDIT_FILE
    if not path.exists():
        return []
    entries = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataError(path, f"line {lineno} is not JSON ({exc.msg})") from None
    return entries
