"""The coordinator's Flower side: the SuperLink daemon, the `flwr` CLI connection, the run submission,
and SuperNode key registrations.

The SuperLink keeps its state in SQLite under RUNDIR/.superlink (a restart keeps the sites
registered); runtime dependency installation, telemetry and update checks are off
(common.federation.processes.flower_env). The FAB that `flwr run` ships is the tiny shim in
server/flower_app. Deployed (not `--insecure`), the SuperLink serves TLS with the coordinator's
certificate and only authenticated SuperNodes (`--enable-supernode-auth`), and listens on
loopback only: hospitals reach its Fleet API through the proxy (server/proxy.py), while the
`flwr` CLI (runs, key registrations) dials it directly on 127.0.0.1.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from mammo_fl.common.federation.app_bundle import APP_DIR
from mammo_fl.common.federation.processes import (
    flower_binary,
    parse_address,
    port_in_use,
    start_daemon,
    toml_literal,
)
from mammo_fl.common.utils.errors import MammoError

CONNECTION = "mammo"


@dataclass(frozen=True)
class TlsFiles:
    """The SuperLink's certificate set (server/pki.py)."""

    ca: Path
    cert: Path
    key: Path


def write_flwr_connection(flwr_home: Path, address: str, ca: Path | None = None) -> None:
    """`$FLWR_HOME/config.toml` naming the SuperLink for the `flwr` CLI (always dialled on loopback);
    with `ca` over TLS, else plain HTTP (lab mode)."""
    host, port = parse_address(address)
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    security = "insecure = true" if ca is None else f"root-certificates = {toml_literal(str(ca.resolve()))}"
    flwr_home.mkdir(parents=True, exist_ok=True)
    (flwr_home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
        f"address = {toml_literal(f'{host}:{port}')}\n{security}\n",
        encoding="utf-8",
    )


def start_superlink(address: str, state: Path, env: dict[str, str], tls: TlsFiles | None = None) -> subprocess.Popen:
    """flower-superlink on `address`; with `tls`: HTTPS and SuperNode authentication, else `--insecure`."""
    host, port = parse_address(address)
    if port_in_use(host, port):
        raise MammoError(f"address {address} is already in use (another mammo-server or SuperLink?)")
    security = ["--insecure"] if tls is None else [
        "--ssl-ca-certfile", str(tls.ca), "--ssl-certfile", str(tls.cert), "--ssl-keyfile", str(tls.key),
        "--enable-supernode-auth",
    ]
    cmd = [
        sys.executable, "-m", "mammo_fl.server.superlink_launch",  # flower-superlink, longer SQLite busy timeout
        *security,
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


class KeyAlreadyUsed(MammoError):
    """Flower refuses a key it has seen in this SuperLink's state before (also after unregistering it)."""


def _flwr_json(args: list[str], env: dict[str, str], timeout_s: float = 120.0) -> dict:
    """Run a `flwr` CLI command with `--format json` against the loopback connection; its JSON reply."""
    proc = subprocess.run([flower_binary("flwr"), *args, CONNECTION, "--format", "json"], env=env,
                          capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL)
    start = proc.stdout.find("{")
    try:
        reply = json.loads(proc.stdout[start:]) if start >= 0 else {}
    except json.JSONDecodeError:
        reply = {}
    if not reply.get("success"):
        detail = str(reply.get("error-message") or proc.stderr or proc.stdout).strip().splitlines()
        raise MammoError(f"`flwr {args[0]} {args[1]}` failed: {detail[-1] if detail else 'no output'}")
    return reply


def register_key(env: dict[str, str], pub: Path, name: str) -> int:
    """`flwr supernode register PUB --name NAME` over loopback; the node id Flower assigned."""
    try:
        return int(_flwr_json(["supernode", "register", str(pub), "--name", name], env)["node-id"])
    except MammoError as exc:
        if "Public key already in use" in str(exc):
            raise KeyAlreadyUsed(str(exc)) from None
        raise


def unregister_node(env: dict[str, str], node_id: int) -> None:
    """`flwr supernode unregister NODE_ID`: the node's key no longer authenticates (it is disconnected)."""
    _flwr_json(["supernode", "unregister", str(node_id)], env)
