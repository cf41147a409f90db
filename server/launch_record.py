"""What each `mammo-server` launch records for provenance: RUNDIR/launches.jsonl, one line per launch.

The run report names the app that ran: the ServerApp records Flower's FAB hash (`grid.run.fab_hash`,
the SHA-256 of the FAB `flwr run` submitted) in its `started` event, and each launch records here,
before anything is submitted, a deterministic SHA-256 of the app directory's files, the initial
model's SHA-256, the settings sources and the versions installed.
"""

from __future__ import annotations

import hashlib
import json
import platform
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

FILE_NAME = "launches.jsonl"
APP_SUFFIXES = (".py", ".toml", ".md", ".yaml", ".yml", ".json", ".jsonl")  # what a FAB may hold


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def app_dir_sha256(app_dir: Path) -> str:
    """SHA-256 over the app's files (sorted relative paths and their SHA-256): same files, same hash."""
    digest = hashlib.sha256()
    files = sorted(p for p in Path(app_dir).rglob("*")
                   if p.is_file() and p.suffix in APP_SUFFIXES and "__pycache__" not in p.parts)
    for path in files:
        digest.update(f"{path.relative_to(app_dir).as_posix()}\0{file_sha256(path)}\n".encode())
    return digest.hexdigest()


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def fab_hash_of(grid: Any) -> str:
    """Flower's hash of the FAB this run was started from ('' where the grid has no run, e.g. in tests)."""
    try:
        return str(grid.run.fab_hash or "")
    except Exception:  # noqa: BLE001 - provenance must never stop a run
        return ""


def record_launch(root: Path, *, launch_id: str, initial_model: Path, app_dir: Path, config_file: Path | None,
                  overrides: list[str], resume: bool) -> dict[str, Any]:
    """Append this launch's provenance to RUNDIR/launches.jsonl and return it."""
    record = {
        "time": time.time(),
        "launch_id": launch_id,
        "resume": resume,
        "argv": sys.argv[1:],
        "initial_model": str(initial_model),
        "initial_model_sha256": file_sha256(initial_model),
        "preset": "common/presets/federation.toml",
        "config_file": str(config_file) if config_file else None,
        "overrides": list(overrides),
        "app_dir": str(app_dir),
        "app_sha256": app_dir_sha256(app_dir),
        "versions": {"mammo-fl": _version("mammo-fl"), "flwr": _version("flwr"), "torch": _version("torch"),
                     "python": platform.python_version()},
        "host": platform.node(),
    }
    with open(Path(root) / FILE_NAME, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, sort_keys=True) + "\n")
    return record


def load_launches(root: Path) -> list[dict[str, Any]]:
    path = Path(root) / FILE_NAME
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
