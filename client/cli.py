"""`mammo-client --site NAME --data DIR --server HOST:PORT --ca ca.pem --key NAME.key`: a hospital joins.

`mammo-client audit verify --data DIR` checks the site's audit log instead (client/audit_cli.py).

Writes the SuperNode's node config (site name, data folder, state folder and the site's policy:
approved app bundles, caps on requests, client/policy.py) into the site's state dir and
supervises `flower-supernode`: TLS against the coordinator's CA, authenticated with the site's
key (`mammo-client keygen` makes it), the app guard in front of every `flwr-clientapp`
(client/app_guard.py). Next to it run the site worker (client/worker.py: torch, the preloaded
images and the model stay warm between rounds) and a pre-started flwr-clientapp (client/launcher.py:
no Flower import per message, the guard installed once), each restarted with back-off when it dies
and stopped with mammo-client. It waits (with back-off) until the coordinator answers, restarts the
SuperNode when it exits, and stops it gracefully on Ctrl-C/SIGTERM. Flower's own output goes to
STATE/supernode.log; the console gets one line per event, including refusals on either side
(unregistered key, refused app bundle, name mismatch). `--insecure` is the loopback lab mode (no
TLS, no key).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from mammo_fl.client.faults import parse_fault
from mammo_fl.client.app import SITE_LOG
from mammo_fl.client.app_guard import GUARD_NAME, write_guard
from mammo_fl.client.channel import socket_path
from mammo_fl.client.keys import check_private_key, generate_site_keys
from mammo_fl.client.launcher import write_shim
from mammo_fl.client.policy import SitePolicy
from mammo_fl.client.site import STATE_SUBDIR
from mammo_fl.client.site_console import RefusalLines, log_size, supernode_exit_reason
from mammo_fl.client.worker_process import ClientAppLauncher, Helper, SiteWorker
from mammo_fl.common.cli import run_cli
from mammo_fl.common.federation.app_bundle import installed_app_sha256
from mammo_fl.common.federation.site_keys import check_site_name
from mammo_fl.common.utils.errors import ConfigError, DataError, MammoError
from mammo_fl.common.federation.processes import (
    flower_env,
    free_port,
    is_loopback,
    parse_address,
    probe_health,
    start_daemon,
    stop_daemon,
    toml_literal,
)

STATE_ENV = "MAMMO_FL_STATE_DIR"  # the site image sets it: state outside the read-only data mount
MAX_BACKOFF_S = 10.0  # a /health probe every 10 s costs nothing
REFUSED_BACKOFF_S = 30.0  # after the coordinator refused the site's key or certificate
SUPEREXEC_POLL_S = "0.1"
GUARD_DIR = "guard"  # STATE/guard/flwr-clientapp: the app guard script
STABLE_RUN_S = 60.0  # a SuperNode that ran this long resets the back-off


class Stop(Exception):
    """SIGTERM/SIGINT: leave the federation cleanly."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mammo-client", description=__doc__.splitlines()[0],
                                epilog="Also: mammo-client keygen --site NAME --out DIR; mammo-client audit verify "
                                       "--data DIR (check the site's audit log and print what left the site)")
    p.add_argument("--site", required=True, help="site name registered at the coordinator (e.g. hospital-a)")
    p.add_argument("--data", required=True, type=Path, help="folder with the site's DICOM files and manifest CSV")
    p.add_argument("--server", required=True, help="coordinator address HOST:PORT (its proxy)")
    p.add_argument("--ca", type=Path, default=None, help="the coordinator's CA certificate (ca.pem)")
    p.add_argument("--key", type=Path, default=None, help="this site's private key (NAME.key from keygen)")
    p.add_argument("--config", type=Path, default=None,
                   help="site policy TOML overriding common/presets/site.toml (approved apps, caps)")
    p.add_argument("--insecure", action="store_true",
                   help="loopback lab only: plain HTTP, no site key")
    p.add_argument("--state-dir", type=Path, default=None,
                   help=f"cache, split, FedBN state, audit log (default ${STATE_ENV}, else DATA/{STATE_SUBDIR})")
    p.add_argument("--port", type=int, default=0, help="local SuperNode runtime port (default: a free one)")
    p.add_argument("--retry-for", type=float, default=0.0,
                   help="give up after the coordinator was unreachable this many seconds (0 = never)")
    p.add_argument("--device", default="auto", help="auto (GPU when present) | cpu | cuda[:n]")
    p.add_argument("--num-threads", type=int, default=0, help="torch CPU threads for local training (0 = default)")
    p.add_argument("--cache-workers", type=int, default=0,
                   help="processes for the first-round image preprocessing (0 = all cores)")
    p.add_argument("--cold-clientapp", action="store_true",
                   help="let Flower start a fresh flwr-clientapp per message instead of the pre-started launcher")
    # tests only: nan | delay:SECONDS | hold:DIR | scale:F | claim-examples:N (client/faults.py)
    p.add_argument("--test-fault", default="", help=argparse.SUPPRESS)
    return p


def say(site: str, text: str) -> None:
    print(f"mammo-client[{site}]: {text}", flush=True)


def _toml_scalar(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return toml_literal(str(value))


def write_node_config(args: argparse.Namespace, state_dir: Path, policy: SitePolicy,
                      worker_socket: Path | None = None) -> Path:
    """Node config as a TOML file of literal strings (Windows paths survive), with the site's policy."""
    lines = [
        f"site = {toml_literal(args.site)}",
        f"data-dir = {toml_literal(str(args.data.resolve()))}",
        f"state-dir = {toml_literal(str(state_dir.resolve()))}",
        f"device = {toml_literal(args.device)}",
        f"num-threads = {int(args.num_threads)}",
        f"cache-workers = {int(args.cache_workers)}",
    ]
    lines += [f"{key} = {_toml_scalar(value)}" for key, value in policy.to_node_config().items()]
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
        reason = probe_health(args.server, insecure=args.insecure, ca=args.ca)
        if reason is None:
            return
        if stop_at is not None and time.monotonic() + backoff > stop_at:
            raise MammoError(f"coordinator {args.server} unreachable for {args.retry_for:.0f} s ({reason}); giving up")
        say(args.site, f"coordinator {args.server} unreachable ({reason}); retrying in {backoff:.0f} s")
        time.sleep(backoff)
        backoff = min(backoff * 2, MAX_BACKOFF_S)


def supernode_command(args: argparse.Namespace, node_config: Path, port: int) -> list[str]:
    security = ["--insecure"] if args.insecure else [
        "--root-certificates", str(args.ca.resolve()), "--auth-supernode-private-key", str(args.key.resolve())]
    return [
        sys.executable, "-m", "mammo_fl.client.supernode_launch",  # flower-supernode, longer task-token grace
        *security,
        "--superlink", args.server,
        "--node-config", str(node_config),
        "--host", "127.0.0.1",
        "--port", str(port),
    ]


def supernode_env(state_dir: Path, launcher: ClientAppLauncher | None) -> dict[str, str]:
    """Flower's environment for the SuperNode, which spawns `flwr-clientapp` by name through PATH:
    first on PATH is the launcher's shim (its fallback is the app guard script), or with
    `--cold-clientapp` the app guard script itself. Either way every task runs behind the guard."""
    # SuperExec polls its SuperNode for new messages every 1 s by default; 0.1 s cuts that wait per message
    env = flower_env(state_dir / "flwr-home", {"FLWR_SUPEREXEC_TASK_POLL_INTERVAL": SUPEREXEC_POLL_S})
    guard = write_guard(state_dir / GUARD_DIR)
    first = guard if launcher is None else write_shim(state_dir / "bin", launcher.socket_path, str(guard))
    env["PATH"] = f"{first.parent}{os.pathsep}{env['PATH']}"
    if shutil.which(GUARD_NAME, path=env["PATH"]) != str(first):
        raise MammoError(f"{first} is not what the SuperNode would run as {GUARD_NAME}")
    return env


def watch_supernode(args: argparse.Namespace, proc: subprocess.Popen, refusals: RefusalLines,
                    helpers: list[Helper]) -> int:
    """Wait for the SuperNode to exit, keeping the helpers alive and printing the site's refusals."""
    while True:
        for line in refusals.poll():
            say(args.site, line)  # "refused app bundle ..." or "<kind> round N failed [code]: ..."
        try:
            return proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            for helper in helpers:
                line = helper.check()
                if line:
                    say(args.site, line)


def supervise(args: argparse.Namespace, state_dir: Path, node_config: Path, helpers: list[Helper]) -> int:
    launcher = next((h for h in helpers if isinstance(h, ClientAppLauncher)), None)
    env = supernode_env(state_dir, launcher)
    backoff = 1.0
    proc: subprocess.Popen | None = None
    log = state_dir / "supernode.log"
    refusals = RefusalLines(state_dir / SITE_LOG)
    refusals.poll()
    try:
        for helper in helpers:
            say(args.site, f"{helper.name} started (pid {helper.start()}, log {helper.log_path})")
        while True:
            stop_at = time.monotonic() + args.retry_for if args.retry_for > 0 else None
            wait_for_coordinator(args, stop_at)
            port = args.port or free_port()
            offset = log_size(log)
            proc = start_daemon(supernode_command(args, node_config, port), env, log)
            say(args.site, f"coordinator reachable; SuperNode started (pid {proc.pid}, log {log})")
            started = time.monotonic()
            code = watch_supernode(args, proc, refusals, helpers)
            if time.monotonic() - started > STABLE_RUN_S:
                backoff = 1.0
            why = supernode_exit_reason(log, offset, args.site)
            if why:
                say(args.site, f"refused: {why}")
            delay = REFUSED_BACKOFF_S if why else backoff  # registration takes a person: no busy retries
            say(args.site, f"SuperNode exited with status {code}; restarting in {delay:.0f} s (details: {log})")
            time.sleep(delay)
            backoff = min(backoff * 2, MAX_BACKOFF_S)
    except Stop:
        say(args.site, "stopping (leaving the federation)")
        return 0
    finally:
        stop_daemon(proc)
        for helper in helpers:
            helper.stop()


def _raise_stop(signum: int, frame: object) -> None:
    raise Stop()


def check_security(args: argparse.Namespace) -> None:
    """TLS + site key by default; `--insecure` only towards a loopback coordinator."""
    host, _ = parse_address(args.server)
    if args.insecure:
        if not is_loopback(host):
            raise ConfigError(f"--insecure is for a loopback lab only; {args.server} is not loopback "
                              "(use --ca ca.pem --key NAME.key)")
        say(args.site, "warning: --insecure: plain HTTP, no site key (loopback lab only)")
        return
    if args.ca is None or args.key is None:
        raise ConfigError("--ca (the coordinator's ca.pem) and --key (NAME.key from `mammo-client keygen`) are "
                          "required; --insecure runs a loopback lab without TLS")
    check_ca_file(args.ca)
    check_private_key(args.key)


def check_ca_file(path: Path) -> None:
    from cryptography import x509

    try:
        x509.load_pem_x509_certificate(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"cannot read --ca {path}: {exc.strerror}") from None
    except ValueError:
        raise ConfigError(f"--ca {path} is not a PEM certificate (the coordinator's ca.pem)") from None


def describe_approval(policy: SitePolicy) -> str:
    installed = installed_app_sha256()
    approved = sorted(h[:12] for h in policy.approved(installed))
    note = "approved" if policy.approve_installed_app else "NOT approved"
    return f"runs app bundles {', '.join(approved) or 'none'} (this release's app {installed[:12]}: {note})"


def keygen(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="mammo-client keygen", description="Make this site's SuperNode key pair.")
    p.add_argument("--site", required=True, help="the site's name (as the coordinator will register it)")
    p.add_argument("--out", required=True, type=Path, help="folder for NAME.key (private, 0600) and NAME.pub")
    args = p.parse_args(argv)
    key, pub = generate_site_keys(args.site, args.out)
    say(args.site, f"private key {key} (mode 0600: keep it here, pass it to --key)")
    say(args.site, f"public key {pub}  <- the only file to send to the coordinator")
    return 0


def _main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["keygen"]:
        return keygen(argv[1:])
    args = build_parser().parse_args(argv)
    check_site_name(args.site)
    check_security(args)
    parse_fault(args.test_fault)  # a typo in a test fault is a one-line error, not a silent honest site
    policy = SitePolicy.load(args.config)
    check_site_data(args)
    state_dir = args.state_dir or (Path(os.environ[STATE_ENV]) if os.environ.get(STATE_ENV) else None) \
        or args.data / STATE_SUBDIR
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
    node_config = write_node_config(args, state_dir, policy, worker.socket_path)
    say(args.site, describe_approval(policy))
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGINT, _raise_stop)
    return supervise(args, state_dir, node_config, helpers)


def main(argv: list[str] | None = None) -> int:
    """Console entry point: one-line errors, exit status 2 on bad input (`audit ...`: client/audit_cli.py)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["audit"]:
        from mammo_fl.client.audit_cli import audit_main

        return run_cli(audit_main, argv[1:])
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
