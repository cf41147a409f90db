"""Keeping a running SuperLink's registered keys in step with the site registry.

`mammo-server` calls `sync_site_keys` once its SuperLink is up; `mammo-server sites add|remove`
call it when HOME/live.json names a running coordinator. Registrations go through the `flwr`
CLI over loopback (the public proxy never forwards the Control API). The result is
RUNDIR/.superlink/site_nodes.json: node id -> {site, key}, which the ServerApp uses to attribute
replies (server/site_nodes.py).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from mammo_fl.common.federation.processes import flower_env
from mammo_fl.common.utils.errors import MammoError
from mammo_fl.server.home import CoordinatorHome
from mammo_fl.server.rundir import atomic_write_text
from mammo_fl.server.site_nodes import write_site_nodes
from mammo_fl.server.sites import load_registry, public_key_file
from mammo_fl.server.superlink import KeyAlreadyUsed, register_key, unregister_node


@dataclass(frozen=True)
class LiveRun:
    """What `sites add|remove` need to reach a running coordinator's SuperLink."""

    pid: int
    flwr_home: str  # holds the `flwr` CLI's loopback connection (config.toml)
    site_nodes: str  # RUNDIR/.superlink/site_nodes.json

    @property
    def records_file(self) -> Path:
        return Path(self.site_nodes).with_name("site_keys.json")


def write_live(home: CoordinatorHome, live: LiveRun) -> None:
    atomic_write_text(home.live_file, json.dumps(asdict(live)) + "\n")


def clear_live(home: CoordinatorHome, pid: int) -> None:
    live = read_live(home, check_alive=False)
    if live is not None and live.pid == pid:
        home.live_file.unlink(missing_ok=True)


def _is_coordinator(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    return "mammo-server" in cmdline or "mammo_fl.server" in cmdline


def read_live(home: CoordinatorHome, check_alive: bool = True) -> LiveRun | None:
    """The running coordinator of this home, or None (no file, or its process is gone)."""
    try:
        live = LiveRun(**json.loads(home.live_file.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None
    if check_alive and not (live.pid == os.getpid() or _is_coordinator(live.pid)):
        return None
    return live


def _read_records(path: Path) -> dict[int, dict[str, str]]:
    try:
        return {int(k): v for k, v in json.loads(path.read_text(encoding="utf-8")).items()}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise MammoError(f"{path}: unreadable ({exc})") from None


def sync_site_keys(home: CoordinatorHome, live: LiveRun) -> list[str]:
    """Register every registry key the SuperLink lacks, unregister keys of removed or re-keyed
    sites; returns one line per change. Call with `home.lock()` held."""
    env = flower_env(Path(live.flwr_home))
    registry = load_registry(home)
    records = _read_records(live.records_file)
    notes: list[str] = []
    gone = {node: rec for node, rec in records.items()
            if rec["site"] not in registry or registry[rec["site"]].fingerprint != rec["key"]}
    for node in gone:
        del records[node]
    _save(live, records)  # the ServerApp refuses a removed site at once, before Flower disconnects it
    for node, rec in sorted(gone.items()):
        unregister_node(env, node)
        notes.append(f"site {rec['site']}: key {rec['key']} unregistered (node {node})")
    known = {(rec["site"], rec["key"]) for rec in records.values()}
    for name, entry in sorted(registry.items()):
        if (name, entry.fingerprint) in known:
            continue
        try:
            node = register_key(env, public_key_file(home, name), name)
        except KeyAlreadyUsed:
            notes.append(f"site {name}: Flower cannot register a key this run's SuperLink has seen before "
                         "(removed earlier): the site makes a new key (`mammo-client keygen`) or use a new --out")
            continue
        records[node] = {"site": name, "key": entry.fingerprint}
        notes.append(f"site {name}: key {entry.fingerprint} registered (node {node})")
    _save(live, records)
    return notes


def _save(live: LiveRun, records: dict[int, dict[str, str]]) -> None:
    atomic_write_text(live.records_file, json.dumps({str(k): v for k, v in sorted(records.items())}, indent=1))
    write_site_nodes(Path(live.site_nodes), {node: rec["site"] for node, rec in records.items()})
