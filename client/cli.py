"""`mammo-client --site NAME --data DIR --server HOST:PORT --insecure`: a hospital joins the federation.

Writes the SuperNode's node config (site name, data folder, state folder) into the site's state
dir and supervises `flower-supernode`: waits (with back-off) until the coordinator answers,
restarts the SuperNode when it exits, and stops it gracefully (it deregisters) on Ctrl-C/SIGTERM.
Next to it run the site worker (client/worker.py: torch, the preloaded images and the model stay
warm between rounds) and a pre-started flwr-clientapp (client/launcher.py: no Flower import per
message), each restarted with back-off when it dies and stopped with mammo-client.
Flower's own output goes to STATE/supernode.log; the console gets one line per event.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from mammo_fl.client.channel import socket_path
from mammo_fl.client.launcher import write_shim
from mammo_fl.client.site import STATE_SUBDIR
from mammo_fl.client.worker_process import ClientAppLauncher, Helper, SiteWorker
from mammo_fl.common.federation.flower_private import clientapp_command
from mammo_fl.common.cli import run_cli
from mammo_fl.common.utils.errors import ConfigError, DataError, MammoError
from mammo_fl.common.federation.processes import (
    flower_binary,
    flower_env,
    free_port,
    parse_address,
    probe_health,
    start_daemon,
    stop_daemon,
    toml_literal,
)

MAX_BACKOFF_S = 10.0  # a /health probe every 10 s costs nothing
SUPEREXEC_POLL_S = "0.1"
STABLE_RUN_S = 60.0  # a SuperNode that ran this long resets the back-off


class Stop(Exception):
    """SIGTERM/SIGINT: leave the federation cleanly."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mammo-client", description=__doc__.splitlines()[0])
    p.add_argument("--site", required=True, help="site name shown to the coordinator (e.g. hospital-a)")
    p.add_argument("--data", required=True, type=Path, help="folder with the site's DICOM files and manifest CSV")
    p.add_argument("--server", required=True, help="coordinator address HOST:PORT (the SuperLink)")
    p.add_argument("--insecure", action="store_true", help="plain HTTP (required until TLS support lands)")
    p.add_argument("--state-dir", type=Path, default=None,
                   help=f"cache, split, FedBN state, audit log (default DATA/{STATE_SUBDIR})")
    p.add_argument("--port", type=int, default=0, help="local SuperNode runtime port (default: a free one)")
    p.add_argument("--retry-for", type=float, default=0.0,
                   help="give up after the coordinator was unreachable this many seconds (0 = never)")
    p.add_argument("--device", default="auto", help="auto (GPU when present) | cpu | cuda[:n]")
    p.add_argument("--num-threads", type=int, default=0, help="torch CPU threads for local training (0 = default)")
    p.add_argument("--cache-workers", type=int, default=0,
                   help="processes for the first-round image preprocessing (0 = all cores)")
    p.add_argument("--cold-clientapp", action="store_true",
                   help="let Flower start a fresh flwr-clientapp per message instead of the pre-started launcher")
    p.add_argument("--test-fault", default="", help=argparse.SUPPRESS)  # tests only: nan | delay:SECONDS
    return p


def say(site: str, text: str) -> None:
    print(f"mammo-client[{site}]: {text}", flush=True)


def write_node_config(args: argparse.Namespace, state_dir: Path, worker_socket: Path | None = None) -> Path:
    """Node config as a TOML file of literal strings (Windows paths survive)."""
    lines = [
        f"site = {toml_literal(args.site)}",
        f"data-dir = {toml_literal(str(args.data.resolve()))}",
        f"state-dir = {toml_literal(str(state_dir.resolve()))}",
        f"device = {toml_literal(args.device)}",
        f"num-threads = {int(args.num_threads)}",
        f"cache-workers = {int(args.cache_workers)}",
    ]
    if worker_socket is not None:  # the ClientApp hands its work to the site worker (client/worker.py)
        lines.append(f"worker-socket = {toml_literal(str(worker_socket))}")
    if args.test_fault:
        lines.append(f"test-fault = {toml_literal(args.test_fault)}")
    path = state_dir / "node-config.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def check_site_data(args: argparse.Namespace) -> None:
    """Refuse a missing folder; only warn about a bad manifest (the coordinator is told per round)."""
    if not args.data.is_dir():
        raise DataError(args.data, "site data folder does not exist")
    try:
        from mammo_fl.client.site import SiteInfo, load_site_images

        images = load_site_images(SiteInfo(args.site, args.data, args.data, {}))
        say(args.site, f"{len(images)} images, {images['patient_id'].nunique()} patients in the manifest")
    except MammoError as exc:
        say(args.site, f"warning: site data problem: {exc} (rounds will report an error for this site)")


def wait_for_coordinator(args: argparse.Namespace, stop_at: float | None) -> None:
    backoff = 1.0
    while True:
        reason = probe_health(args.server, insecure=True)
        if reason is None:
            return
        if stop_at is not None and time.monotonic() + backoff > stop_at:
            raise MammoError(f"coordinator {args.server} unreachable for {args.retry_for:.0f} s ({reason}); giving up")
        say(args.site, f"coordinator {args.server} unreachable ({reason}); retrying in {backoff:.0f} s")
        time.sleep(backoff)
        backoff = min(backoff * 2, MAX_BACKOFF_S)


def supernode_command(args: argparse.Namespace, node_config: Path, port: int) -> list[str]:
    return [
        flower_binary("flower-supernode"),
        "--insecure",
        "--superlink", args.server,
        "--node-config", str(node_config),
        "--host", "127.0.0.1",
        "--port", str(port),
    ]


def supernode_env(state_dir: Path, launcher: ClientAppLauncher | None) -> dict[str, str]:
    """Flower's environment for the SuperNode; with the launcher, its `flwr-clientapp` shim comes first on PATH."""
    # SuperExec polls its SuperNode for new messages every 1 s by default; 0.1 s cuts that wait per message
    env = flower_env(state_dir / "flwr-home", {"FLWR_SUPEREXEC_TASK_POLL_INTERVAL": SUPEREXEC_POLL_S})
    if launcher is not None:
        shim = write_shim(state_dir / "bin", launcher.socket_path, flower_binary(clientapp_command()))
        env["PATH"] = f"{shim.parent}{os.pathsep}{env['PATH']}"
    return env


def supervise(args: argparse.Namespace, state_dir: Path, node_config: Path, helpers: list[Helper]) -> int:
    launcher = next((h for h in helpers if isinstance(h, ClientAppLauncher)), None)
    env = supernode_env(state_dir, launcher)
    backoff = 1.0
    proc: subprocess.Popen | None = None
    try:
        for helper in helpers:
            say(args.site, f"{helper.name} started (pid {helper.start()}, log {helper.log_path})")
        while True:
            stop_at = time.monotonic() + args.retry_for if args.retry_for > 0 else None
            wait_for_coordinator(args, stop_at)
            port = args.port or free_port()
            proc = start_daemon(supernode_command(args, node_config, port), env, state_dir / "supernode.log")
            say(args.site, f"coordinator reachable; SuperNode started (pid {proc.pid}, "
                           f"log {state_dir / 'supernode.log'})")
            started = time.monotonic()
            code = _wait_supernode(args, proc, helpers)
            if time.monotonic() - started > STABLE_RUN_S:
                backoff = 1.0
            say(args.site, f"SuperNode exited with status {code}; restarting in {backoff:.0f} s "
                           f"(details: {state_dir / 'supernode.log'})")
            time.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_S)
    except Stop:
        say(args.site, "stopping (leaving the federation)")
        return 0
    finally:
        stop_daemon(proc)
        for helper in helpers:
            helper.stop()


def _wait_supernode(args: argparse.Namespace, proc: subprocess.Popen, helpers: list[Helper]) -> int:
    """Until the SuperNode exits, keeping the helpers alive; the SuperNode's exit status."""
    while True:
        try:
            return proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            for helper in helpers:
                line = helper.check()
                if line:
                    say(args.site, line)


def _raise_stop(signum: int, frame: object) -> None:
    raise Stop()


def _main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.insecure:
        raise ConfigError("TLS is not supported yet: pass --insecure explicitly to connect over plain HTTP")
    parse_address(args.server)
    if not args.site.strip() or any(c in args.site for c in "'\n/\\"):
        raise ConfigError(f"site name {args.site!r} must be non-empty without quotes, slashes or newlines")
    check_site_data(args)
    state_dir = args.state_dir or args.data / STATE_SUBDIR
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(state_dir, f"cannot create the site state folder ({exc.strerror})") from None
    helper_env = flower_env(state_dir / "flwr-home")
    worker = SiteWorker(socket_path(state_dir), state_dir / "worker.log", helper_env)
    helpers: list[Helper] = [worker]
    if not args.cold_clientapp:
        launcher_env = {**helper_env, "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": SUPEREXEC_POLL_S}
        helpers.append(ClientAppLauncher(socket_path(state_dir, "launcher.sock"), state_dir / "launcher.log",
                                         launcher_env))
    node_config = write_node_config(args, state_dir, worker.socket_path)
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGINT, _raise_stop)
    return supervise(args, state_dir, node_config, helpers)


def main(argv: list[str] | None = None) -> int:
    """Console entry point: one-line errors, exit status 2 on bad input."""
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
