"""The coordinator's Flower side: the SuperLink daemon, the `flwr` CLI connection, the run submission.

The SuperLink keeps its state in SQLite under RUNDIR/.superlink (a restart keeps the sites
registered); runtime dependency installation, telemetry and update checks are off
(common.federation.processes.flower_env). The FAB that `flwr run` ships is the tiny shim in
server/flower_app.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from mammo_fl.common.federation.processes import (
    flower_binary,
    parse_address,
    port_in_use,
    start_daemon,
    toml_literal,
)
from mammo_fl.common.utils.errors import MammoError

APP_DIR = Path(__file__).parent / "flower_app"
CONNECTION = "mammo"


def write_flwr_connection(flwr_home: Path, address: str) -> None:
    """`$FLWR_HOME/config.toml` naming the SuperLink for the `flwr` CLI (always dialled on loopback)."""
    host, port = parse_address(address)
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    flwr_home.mkdir(parents=True, exist_ok=True)
    (flwr_home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
        f"address = {toml_literal(f'{host}:{port}')}\ninsecure = true\n",
        encoding="utf-8",
    )


def start_superlink(address: str, state: Path, env: dict[str, str]) -> subprocess.Popen:
    host, port = parse_address(address)
    if port_in_use(host, port):
        raise MammoError(f"address {address} is already in use (another mammo-server or SuperLink?)")
    cmd = [
        sys.executable, "-m", "mammo_fl.server.superlink_launch",  # flower-superlink, longer SQLite busy timeout
        "--insecure",
        "--host", host,
        "--port", str(port),
        "--database", str(state / "state.db"),
        "--disable-runtime-dependency-installation",
    ]
    return start_daemon(cmd, env, state / "superlink.log")


def submit_run(run_config: Path, env: dict[str, str], log_path: Path) -> subprocess.Popen:
    """`flwr run` of the app with the launch's run config; its output goes to `log_path`."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [flower_binary("flwr"), "run", str(APP_DIR), CONNECTION, "--run-config", str(run_config), "--stream"],
            env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
