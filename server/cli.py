"""`mammo-server --home HOME --model CKPT --rounds N --min-sites K --out RUNDIR --address HOST:PORT`: the coordinator.

Deployed (the default): starts `flower-superlink` on a loopback port with TLS (HOME's certificate)
and SuperNode authentication, registers the keys of HOME's registered sites over loopback, and
serves `--address` through nginx, which forwards only the Fleet API and /health
(server/proxy.py). `--insecure` is the loopback lab mode: plain HTTP, no site keys, no proxy.
Either way: SQLite state in RUNDIR (a restart keeps the sites registered), runtime dependency
installation, telemetry and update checks off; waits for /health, submits the run with
`flwr run` (the FAB is the tiny shim in server/flower_app), prints a per-round table from the
ServerApp's events, and stops everything when the run ends. `--resume` continues a killed run
from its last completed round. Flower's output goes to RUNDIR/flower.log and
RUNDIR/.superlink/superlink.log, nginx's to RUNDIR/.proxy/. Also `mammo-server init` and
`mammo-server sites add|list|remove` (server/admin.py). `--dashboard 127.0.0.1:PORT` serves the live
coordinator page (server/dashboard.py); `mammo-server report RUNDIR --out report.html` writes the
run report (server/report.py).
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from mammo_fl.common.cli import run_cli
from mammo_fl.common.federation.processes import (
    flower_env,
    free_port,
    is_loopback,
    parse_address,
    stop_daemon,
    stop_stale_process,
    wait_healthy,
)
from mammo_fl.common.utils.errors import ConfigError, DataError, MammoError
from mammo_fl.server.console import follow_run, last_error_line, say
from mammo_fl.server.home import CoordinatorHome
from mammo_fl.server.run_config import load_run_config, write_run_config
from mammo_fl.server.rundir import RunDir
from mammo_fl.server.launch_record import record_launch
from mammo_fl.server.superlink import APP_DIR, TlsFiles, start_superlink, submit_run, write_flwr_connection


class Stop(Exception):
    """SIGTERM/SIGINT."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mammo-server", description=__doc__.splitlines()[0],
                                epilog="Also: mammo-server init --home HOME --host HOST; "
                                       "mammo-server sites add|list|remove ... --home HOME")
    p.add_argument("--home", type=Path, default=None,
                   help="coordinator home from `mammo-server init` (CA, certificate, registered sites)")
    p.add_argument("--model", required=True, type=Path, help="initial whole-image checkpoint (from mammo-train)")
    p.add_argument("--rounds", type=int, default=None, help="number of federated rounds")
    p.add_argument("--min-sites", type=int, default=None, help="sites required for a round")
    p.add_argument("--out", required=True, type=Path, help="run folder (checkpoints, metrics, state)")
    p.add_argument("--address", default="127.0.0.1:8000",
                   help="public HOST:PORT hospitals dial (served by the proxy; 0.0.0.0:8000 = every interface)")
    p.add_argument("--config", type=Path, default=None, help="TOML file overriding common/presets/federation.toml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one setting, e.g. --set strategy=fedprox --set lr=2e-5")
    p.add_argument("--insecure", action="store_true",
                   help="loopback lab only: plain HTTP, no site authentication, no proxy")
    p.add_argument("--resume", action="store_true", help="continue the run in --out after its last completed round")
    p.add_argument("--dashboard", metavar="[HOST:]PORT", default=None,
                   help="serve the read-only coordinator page (and /api/status) here, e.g. 127.0.0.1:8080")
    return p


def check_model(path: Path) -> None:
    from mammo_fl.common.models.checkpoint import read_checkpoint_meta

    meta = read_checkpoint_meta(path)
    if meta["kind"] != "whole_image":
        raise DataError(path, f"federated fine-tuning needs a whole_image checkpoint, got {meta['kind']!r}")


def _raise_stop(signum: int, frame: object) -> None:
    raise Stop()


def check_security(args: argparse.Namespace) -> CoordinatorHome | None:
    """The coordinator home (deployed), or None in the loopback lab mode (`--insecure`)."""
    host, _ = parse_address(args.address)
    if args.insecure:
        if not is_loopback(host):
            raise ConfigError(f"--insecure is for a loopback lab only; {args.address} is not loopback "
                              "(deploy with --home HOME from `mammo-server init`)")
        say("warning: --insecure: plain HTTP and no site authentication; any local process can join (lab only)")
        return None
    if args.home is None:
        raise ConfigError("--home HOME is required (make it with `mammo-server init --home HOME --host HOST`); "
                          "--insecure runs a loopback lab without TLS")
    from mammo_fl.server.proxy import find_nginx

    find_nginx()  # before anything starts: one line saying how to install it
    return CoordinatorHome(args.home.resolve()).check_initialised()


def _main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["init"], ["sites"]):
        from mammo_fl.server.admin import run_admin

        return run_admin(argv)
    args = build_parser().parse_args(argv)
    home = check_security(args)
    check_model(args.model)
    rundir = RunDir(args.out.resolve())
    config = load_run_config(args, rundir.root)
    rundir.launch_id = config["launch-id"]
    if rundir.prepare_launch(args.resume) == "nothing-to-resume":
        say(f"note: nothing to resume in {rundir.root}; starting at round 1")
    pid = rundir.writer_pid()
    if pid and stop_stale_process(pid, "flwr-serverapp"):
        say(f"stopped a stale ServerApp (pid {pid}) left by an earlier launch")
    state = rundir.root / ".superlink"
    flwr_home = state / "flwr-home"
    env = flower_env(flwr_home)
    # Deployed, the SuperLink listens on a loopback port only; the proxy serves --address.
    link = args.address if home is None else f"127.0.0.1:{free_port()}"
    write_flwr_connection(flwr_home, link, ca=home.ca_pem if home else None)
    if home is not None:
        config["site-nodes"] = str(state / "site_nodes.json")
    run_config = rundir.root / "run_config.toml"
    write_run_config(config, run_config)
    record_launch(rundir.root, launch_id=config["launch-id"], initial_model=args.model.resolve(), app_dir=APP_DIR,
                  config_file=args.config, overrides=args.overrides, resume=args.resume)  # provenance for the report
    dashboard = None
    if args.dashboard:  # the live coordinator page (Starlette/uvicorn imported only when asked for)
        from mammo_fl.server.dashboard import start_dashboard

        dashboard = start_dashboard(args.dashboard, rundir.root, env)
        say(dashboard.banner())
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGINT, _raise_stop)
    superlink = flwr_run = None
    gate = None
    try:
        tls = TlsFiles(home.ca_pem, home.server_pem, home.server_key) if home else None
        superlink = start_superlink(link, state, env, tls)
        wait_healthy(link, insecure=home is None, timeout_s=300.0, proc=superlink, ca=home.ca_pem if home else None)
        if home is not None:
            from mammo_fl.server.gate import open_gate

            gate = open_gate(home, args.address, link, state, rundir.root / ".proxy", env)
        say(f"{'SuperLink' if home is None else 'coordinator'} up at {args.address} (state {state / 'state.db'}); "
            f"waiting for {config['min-sites']} site(s)")
        flwr_run = submit_run(run_config, env, rundir.root / "flower.log")
        status = follow_run(rundir, flwr_run, superlink, tick=gate.tick if gate else None)
    except Stop:
        say(f"interrupted; continue later with: mammo-server ... --out {rundir.root} --resume")
        return 130
    finally:
        stop_daemon(flwr_run, grace_s=3)
        if gate is not None:
            gate.close()
        stop_daemon(superlink)
        if dashboard is not None:
            dashboard.stop()
    if status.get("status") != "completed":
        hint = last_error_line(rundir.root / "flower.log")
        raise MammoError(f"federation failed: {status.get('reason')}" + (f" [{hint}]" if hint else ""))
    say(f"done: {status.get('rounds')} rounds; final model {rundir.final}; metrics {rundir.metrics_csv}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Console entry point: one-line errors, exit status 2 on bad input or a failed run."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["report"]:  # `mammo-server report RUNDIR --out report.html`
        from mammo_fl.server.report import report_main

        return run_cli(report_main, argv[1:])
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
