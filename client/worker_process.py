"""mammo-client's side of its helper processes (the site worker, the ClientApp launcher): start
them, restart them with back-off when they die, stop them.

Each is started with PR_SET_PDEATHSIG (common/federation/processes.start_daemon) and is told
mammo-client's pid, so it never outlives the supervisor, even after a SIGKILL.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from mammo_fl.common.federation.processes import start_daemon, stop_daemon

MAX_BACKOFF_S = 10.0
STABLE_RUN_S = 60.0


class Helper:
    """One supervised helper process listening on a Unix socket (`python -m MODULE --socket ...`)."""

    module = ""
    name = ""

    def __init__(self, socket_path: Path, log_path: Path, env: dict[str, str]) -> None:
        self.socket_path = socket_path
        self.log_path = log_path
        self.env = env
        self.proc: subprocess.Popen | None = None
        self._started = 0.0
        self._backoff = 1.0
        self._restart_at = 0.0

    def command(self) -> list[str]:
        return [sys.executable, "-m", self.module, "--socket", str(self.socket_path), "--parent", str(os.getpid())]

    def start(self) -> int:
        self.proc = start_daemon(self.command(), self.env, self.log_path)
        self._started = time.monotonic()
        return self.proc.pid

    def check(self) -> str | None:
        """Restart a dead worker (after its back-off); returns a line for the console when something happened."""
        if self.proc is None or self.proc.poll() is None:
            return None
        now = time.monotonic()
        if self._restart_at == 0.0:
            if now - self._started > STABLE_RUN_S:
                self._backoff = 1.0
            self._restart_at = now + self._backoff
            code = self.proc.returncode
            msg = f"{self.name} exited with status {code}; restarting in {self._backoff:.0f} s"
            self._backoff = min(self._backoff * 2, MAX_BACKOFF_S)
            return msg
        if now < self._restart_at:
            return None
        self._restart_at = 0.0
        return f"{self.name} restarted (pid {self.start()})"

    def stop(self) -> None:
        stop_daemon(self.proc, grace_s=5.0)
        self.proc = None
        self.socket_path.unlink(missing_ok=True)


class SiteWorker(Helper):
    """The site's long-lived worker (client/worker.py): torch, data and model stay warm."""

    module = "mammo_fl.client.worker"
    name = "site worker"


class ClientAppLauncher(Helper):
    """The pre-started flwr-clientapp (client/launcher.py) the SuperNode's shim hands each message to."""

    module = "mammo_fl.client.launcher"
    name = "clientapp launcher"
