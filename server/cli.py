"""`mammo-server --model CKPT --rounds N --min-sites K --out RUNDIR --insecure`: the coordinator.

Starts `flower-superlink` (SQLite state in RUNDIR so a restart keeps the sites registered;
runtime dependency installation, telemetry and update checks off), waits for /health, submits
the run with `flwr run` (the FAB is the tiny shim in server/flower_app), prints a per-round table
from the ServerApp's events, and stops the SuperLink when the run ends. `--resume` continues a
killed run from its last completed round. Flower's own output goes to RUNDIR/flower.log and
RUNDIR/.superlink/superlink.log.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from mammo_fl.common.cli import run_cli
from mammo_fl.common.utils.config import PRESET_DIR, apply_overrides, load_toml
from mammo_fl.common.utils.errors import ConfigError, DataError, MammoError
from mammo_fl.common.federation.processes import (
    flower_binary,
    flower_env,
    parse_address,
    port_in_use,
    start_daemon,
    stop_daemon,
    toml_literal,
    wait_healthy,
)
from mammo_fl.server.rundir import RunDir
from mammo_fl.server.settings import FederationSettings

APP_DIR = Path(__file__).parent / "flower_app"
CONNECTION = "mammo"
START_TIMEOUT_S = 600.0  # the ServerApp must report "started" within this (slow on a loaded machine)


class Stop(Exception):
    """SIGTERM/SIGINT."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mammo-server", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, type=Path, help="initial whole-image checkpoint (from mammo-train)")
    p.add_argument("--rounds", type=int, default=None, help="number of federated rounds")
    p.add_argument("--min-sites", type=int, default=None, help="sites required for a round")
    p.add_argument("--out", required=True, type=Path, help="run folder (checkpoints, metrics, state)")
    p.add_argument("--address", default="127.0.0.1:8000",
                   help="SuperLink HOST:PORT (0.0.0.0:8000 to accept remote hospitals)")
    p.add_argument("--config", type=Path, default=None, help="TOML file overriding common/presets/federation.toml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one setting, e.g. --set strategy=fedprox --set lr=2e-5")
    p.add_argument("--insecure", action="store_true", help="plain HTTP (required until TLS support lands)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out after its last completed round")
    return p


def say(text: str) -> None:
    print(text, flush=True)


def load_settings(args: argparse.Namespace, rundir: Path) -> dict[str, Any]:
    """Preset <- --config file <- --set <- explicit flags; unknown keys are errors."""
    config = load_toml(PRESET_DIR / "federation.toml")
    if args.config is not None:
        if not args.config.is_file():
            raise ConfigError(f"config file not found: {args.config}")
        for key, value in load_toml(args.config).items():
            if key not in config:
                raise ConfigError(f"{args.config}: unknown federation setting {key!r}")
            config[key] = value
    config = apply_overrides(config, args.overrides)
    config["initial-model"] = str(args.model.resolve())
    config["out-dir"] = str(rundir)
    config["resume"] = bool(args.resume)
    config["launch-id"] = uuid.uuid4().hex[:12]
    if args.rounds is not None:
        config["num-server-rounds"] = args.rounds
    if args.min_sites is not None:
        config["min-sites"] = args.min_sites
    FederationSettings.from_run_config(config)  # validates types and ranges
    return config


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) if not isinstance(v, str) else json.dumps(v) for v in value) + "]"
    return repr(value)


def write_run_config(config: dict[str, Any], path: Path) -> None:
    lines = []
    for key, value in config.items():
        lines.append(f"{key} = {json.dumps(value) if isinstance(value, str) else _toml(value)}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def check_model(path: Path) -> None:
    from mammo_fl.common.models.checkpoint import read_checkpoint_meta

    meta = read_checkpoint_meta(path)
    if meta["kind"] != "whole_image":
        raise DataError(path, f"federated fine-tuning needs a whole_image checkpoint, got {meta['kind']!r}")


def check_rundir(rundir: RunDir, resume: bool) -> None:
    state = rundir.load_state()
    if state is not None and not resume:
        raise ConfigError(
            f"{rundir.root} already holds a run (round {state['completed_round']} done): "
            "add --resume to continue it or choose another --out"
        )
    if resume and state is None:
        say(f"note: nothing to resume in {rundir.root}; starting at round 1")
    if not resume or state is None:
        for stale in (rundir.events, rundir.status_file):
            stale.unlink(missing_ok=True)
    else:
        rundir.status_file.unlink(missing_ok=True)


def stop_stale_writer(rundir: RunDir) -> None:
    """A ServerApp of a killed launch may outlive its SuperLink; stop it before resuming."""
    try:
        pid = int(rundir.lock_file.read_text().strip() or 0)
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace") if pid else ""
    except (OSError, ValueError):
        return
    if "flwr-serverapp" not in cmdline:
        return
    say(f"stopping a stale ServerApp (pid {pid}) left by an earlier launch")
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
        time.sleep(0.2)
    if Path(f"/proc/{pid}").exists():
        os.kill(pid, signal.SIGKILL)


def write_flwr_connection(flwr_home: Path, address: str) -> None:
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


class Table:
    """Turns ServerApp events into console lines a coordinator can read."""

    def __init__(self) -> None:
        self.header_done = False

    def line(self, ev: dict[str, Any]) -> str | None:
        kind = ev.get("event")
        if kind == "started":
            return (f"run {ev.get('run_id')}: rounds {ev.get('first_round')}..{ev.get('rounds')}, "
                    f"strategy {ev.get('strategy')}, min-sites {ev.get('min_sites')}")
        if kind == "resumed":
            return (f"resuming after round {ev.get('completed_round')} "
                    f"({ev.get('strategy_arrays')} strategy arrays restored)")
        if kind == "waiting":
            return f"  round {ev.get('round')}: waiting for sites ({ev.get('connected')}/{ev.get('need')} connected)"
        if kind == "round_retry":
            return (f"  round {ev.get('round')}: only {ev.get('valid')} valid update(s), need {ev.get('need')}; "
                    "retrying the round")
        if kind in ("site_rejected", "site_missing"):
            who = ev.get("site") or f"node-{ev.get('node')}"
            return f"  ! round {ev.get('round')} {ev.get('kind')}: {who}: {ev.get('reason')}"
        if kind == "round_end":
            out = []
            if not self.header_done:
                out.append(f"{'round':>5} {'pooled AUC':>10} {'sites':>5} {'sens':>6} {'spec':>6} "
                           f"{'loss':>8} {'secs':>7}  per-site AUC")
                self.header_done = True
            sites = " ".join(f"{k[4:]}={_fmt(v)}" for k, v in sorted(ev.items()) if k.startswith("auc_"))
            out.append(f"{ev['round']:>5} {_fmt(ev.get('pooled_auc')):>10} {ev.get('sites', 0):>5} "
                       f"{_fmt(ev.get('sens'), 2):>6} {_fmt(ev.get('spec'), 2):>6} "
                       f"{_fmt(ev.get('train_loss')):>8} {_fmt(ev.get('round_seconds'), 1):>7}  {sites}")
            return "\n".join(out)
        if kind == "failed":
            return f"run failed: {ev.get('reason')}"
        return None


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{float(v):.{digits}f}"


def follow_run(rundir: RunDir, flwr_run: subprocess.Popen, superlink: subprocess.Popen) -> dict[str, Any]:
    """Print events until the run ends; return status.json (or a synthetic failure)."""
    table = Table()
    offset = rundir.events.stat().st_size if rundir.events.exists() else 0  # --resume: only new events
    started_at = time.monotonic()
    seen_start = False
    while True:
        if rundir.events.exists():
            with open(rundir.events, encoding="utf-8") as fh:
                fh.seek(offset)
                for raw in fh:
                    if not raw.endswith("\n"):
                        break
                    offset += len(raw.encode())
                    ev = json.loads(raw)
                    if ev.get("launch_id") != rundir.launch_id:
                        continue  # a stale ServerApp of an earlier (killed) launch
                    seen_start |= ev.get("event") in ("started", "failed")
                    text = table.line(ev)
                    if text:
                        say(text)
        status = _read_status(rundir)
        if status and status.get("launch_id") != rundir.launch_id:
            status = None
        if status and status.get("status") in ("completed", "failed"):
            return status
        if superlink.poll() is not None:
            return {"status": "failed", "reason": f"SuperLink exited with status {superlink.returncode}"}
        if flwr_run.poll() is not None and not (status and status.get("status") == "running"):
            if flwr_run.returncode != 0 or seen_start:
                return {"status": "failed", "reason": "the run ended without a result"}
        if not seen_start and time.monotonic() - started_at > START_TIMEOUT_S:
            return {"status": "failed", "reason": f"the ServerApp did not start within {START_TIMEOUT_S:.0f} s"}
        time.sleep(0.5)


def _read_status(rundir: RunDir) -> dict[str, Any] | None:
    try:
        return json.loads(rundir.status_file.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def last_error_line(log: Path) -> str:
    try:
        text = re.sub(r"\x1b\[[0-9;]*m", "", log.read_text(errors="replace"))  # colour codes
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    except OSError:
        return ""
    errors = [ln for ln in lines if "Error" in ln or "ERROR" in ln]
    return errors[-1][:300] if errors else ""


def _raise_stop(signum: int, frame: object) -> None:
    raise Stop()


def _main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.insecure:
        raise ConfigError("TLS is not supported yet: pass --insecure explicitly to run without encryption")
    parse_address(args.address)
    check_model(args.model)
    rundir = RunDir(args.out.resolve())
    config = load_settings(args, rundir.root)
    rundir.launch_id = config["launch-id"]
    check_rundir(rundir, args.resume)
    stop_stale_writer(rundir)
    state = rundir.root / ".superlink"
    flwr_home = state / "flwr-home"
    env = flower_env(flwr_home)
    write_flwr_connection(flwr_home, args.address)
    run_config = rundir.root / "run_config.toml"
    write_run_config(config, run_config)
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGINT, _raise_stop)
    superlink = flwr_run = None
    try:
        superlink = start_superlink(args.address, state, env)
        wait_healthy(args.address, insecure=True, timeout_s=300.0, proc=superlink)
        say(f"SuperLink up at {args.address} (state {state / 'state.db'}); waiting for {config['min-sites']} site(s)")
        log = open(rundir.root / "flower.log", "ab")  # noqa: SIM115 - child keeps it
        flwr_run = subprocess.Popen(
            [flower_binary("flwr"), "run", str(APP_DIR), CONNECTION, "--run-config", str(run_config), "--stream"],
            env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        log.close()
        status = follow_run(rundir, flwr_run, superlink)
    except Stop:
        say(f"interrupted; continue later with: mammo-server ... --out {rundir.root} --resume")
        return 130
    finally:
        stop_daemon(flwr_run, grace_s=3)
        stop_daemon(superlink)
    if status.get("status") != "completed":
        hint = last_error_line(rundir.root / "flower.log")
        raise MammoError(f"federation failed: {status.get('reason')}" + (f" [{hint}]" if hint else ""))
    say(f"done: {status.get('rounds')} rounds; final model {rundir.final}; metrics {rundir.metrics_csv}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Console entry point: one-line errors, exit status 2 on bad input or a failed run."""
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
