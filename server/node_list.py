"""Flower's own view of the SuperNodes, for the coordinator page: `flwr supernode list --format json`.

The public `flwr` CLI asks the SuperLink's Control API; it costs a process start (about 2 s of CPU),
so a background thread refreshes the list only while the page is being watched, at most every
`interval_s`, and requests never wait for it. Node ids map to site names through the run's events.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time

from mammo_fl.common.federation.processes import flower_binary
from mammo_fl.server.superlink import CONNECTION


def parse_node_list(stdout: str) -> dict[int, str] | None:
    """{node_id: status} from the CLI's JSON ('online', 'offline', 'unregistered', ...); None on failure."""
    start = stdout.find("{")
    try:
        data = json.loads(stdout[start:]) if start >= 0 else None
    except json.JSONDecodeError:
        return None
    if not isinstance(data, dict) or not data.get("success"):
        return None
    return {int(node["node-id"]): str(node.get("status", "")) for node in data.get("nodes", [])}


def list_nodes(env: dict[str, str], timeout_s: float = 60.0) -> dict[int, str] | None:
    try:
        proc = subprocess.run([flower_binary("flwr"), "supernode", "list", CONNECTION, "--format", "json"],
                              env=env, capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_node_list(proc.stdout) if proc.returncode == 0 else None


class FlowerNodes:
    """The latest node list, refreshed in the background while someone asked for it recently."""

    def __init__(self, env: dict[str, str], interval_s: float = 10.0, watched_s: float = 60.0) -> None:
        self.env, self.interval_s, self.watched_s = env, interval_s, watched_s
        self._nodes: dict[int, str] | None = None
        self._asked = -1e9
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="flower-node-list", daemon=True)

    def start(self) -> FlowerNodes:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=5)

    def snapshot(self) -> dict[int, str] | None:
        """The last list (None until one arrived or when the SuperLink is unreachable)."""
        self._asked = time.monotonic()
        self._wake.set()
        return self._nodes

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait()
            if self._stop.is_set():
                return
            if time.monotonic() - self._asked > self.watched_s:
                self._wake.clear()  # nobody is looking: sleep until the next request
                continue
            self._nodes = list_nodes(self.env)
            self._stop.wait(self.interval_s)
