"""`mammo-client --site NAME --data DIR --server HOST:PORT --insecure`: a hospital joins the federation.

`mammo-client audit verify --data DIR` checks the site's audit log instead (client/audit_cli.py).

Writes the SuperNode's node config (site name, data folder, state folder) into the site's state
dir and supervises `flower-supernode`: waits (with back-off) until the coordinator answers,
restarts the SuperNode when it exits, and stops it gracefully (it deregisters) on Ctrl-C/SIGTERM.
Flower's own output goes to STATE/supernode.log; the console gets one line per event.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from pathlib import Path

from mammo_fl.client.faults import parse_fault
from mammo_fl.client.site import STATE_SUBDIR
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
STABLE_RUN_S = 60.0  # a SuperNode that ran this long resets the back-off


class Stop(Exception):
    """SIGTERM/SIGINT: leave the federation cleanly."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mammo-client", description=__doc__.splitlines()[0],
                                epilog="mammo-client audit verify --data DIR: check the site's audit log "
                                       "and print what left the site")
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
    # tests only: nan | delay:SECONDS | scale:F | claim-examples:N (client/faults.py)
    p.add_argument("--test-fault", default="", help=argparse.SUPPRESS)
    return p


def say(site: str, text: str) -> None:
    print(f"mammo-client[{site}]: {text}", flush=True)


def write_node_config(args: argparse.Namespace, state_dir: Path) -> Path:
    """Node config as a TOML file of literal strings (Windows paths survive)."""
    lines = [
        f"site = {toml_literal(args.site)}",
        f"data-dir = {toml_literal(str(args.data.resolve()))}",
        f"state-dir = {toml_literal(str(state_dir.resolve()))}",
        f"device = {toml_literal(args.device)}",
        f"num-threads = {int(args.num_threads)}",
        f"cache-workers = {int(args.cache_workers)}",
    ]
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


def supervise(args: argparse.Namespace, state_dir: Path, node_config: Path) -> int:
    env = flower_env(state_dir / "flwr-home")
    backoff = 1.0
    proc: subprocess.Popen | None = None
    try:
        while True:
            stop_at = time.monotonic() + args.retry_for if args.retry_for > 0 else None
            wait_for_coordinator(args, stop_at)
            port = args.port or free_port()
            proc = start_daemon(supernode_command(args, node_config, port), env, state_dir / "supernode.log")
            say(args.site, f"coordinator reachable; SuperNode started (pid {proc.pid}, "
                           f"log {state_dir / 'supernode.log'})")
            started = time.monotonic()
            code = proc.wait()
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


def _raise_stop(signum: int, frame: object) -> None:
    raise Stop()


def _main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.insecure:
        raise ConfigError("TLS is not supported yet: pass --insecure explicitly to connect over plain HTTP")
    parse_address(args.server)
    parse_fault(args.test_fault)  # a typo in a test fault is a one-line error, not a silent honest site
    if not args.site.strip() or any(c in args.site for c in "'\n/\\"):
        raise ConfigError(f"site name {args.site!r} must be non-empty without quotes, slashes or newlines")
    check_site_data(args)
    state_dir = args.state_dir or args.data / STATE_SUBDIR
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(state_dir, f"cannot create the site state folder ({exc.strerror})") from None
    node_config = write_node_config(args, state_dir)
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGINT, _raise_stop)
    return supervise(args, state_dir, node_config)


def main(argv: list[str] | None = None) -> int:
    """Console entry point: one-line errors, exit status 2 on bad input (`audit ...`: client/audit_cli.py)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["audit"]:
        from mammo_fl.client.audit_cli import audit_main

        return run_cli(audit_main, argv[1:])
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
