"""What the coordinator sees in its terminal: one line per round and event, read from the ServerApp's events.

The ServerApp runs in a process of Flower's; it appends events to RUNDIR/events.jsonl and writes
RUNDIR/status.json. `follow_run` tails them until the run ends.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mammo_fl.server.rundir import RunDir

START_TIMEOUT_S = 600.0  # the ServerApp must report "started" within this (slow on a loaded machine)


def say(text: str) -> None:
    print(text, flush=True)


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
        if kind == "site_screened":  # clipped or capped, but accepted (server/safeguards.py)
            return f"  ~ round {ev.get('round')} {ev.get('kind')}: {ev.get('site')}: {ev.get('reason')}"
        if kind == "test_faults":
            return f"TEST FAULTS injected at simulated sites: {ev.get('faults')}"
        if kind in ("round_end", "final_evaluation"):
            return self._round_line(ev) + _privacy(ev)
        if kind == "failed":
            return f"run failed: {ev.get('reason')}"
        return None

    def _round_line(self, ev: dict[str, Any]) -> str:
        """Round r's training, and the AUC of the model its sites evaluated (round r-1's; `model`)."""
        out = []
        if not self.header_done:
            out.append(f"{'round':>5} {'loss':>8} {'sites':>5} {'secs':>7} {'MB down/up':>11} | {'model':>7} "
                       f"{'pooled AUC':>10} {'thresh':>6} {'sens':>6} {'spec':>6}  per-site AUC")
            self.header_done = True
        if ev.get("event") == "final_evaluation":
            train = f"{'final':>5} {'':>8} {'':>5} {'':>7} {'':>11}"
            model, prefix = ev.get("model"), ""
        else:
            mb = f"{_mb(ev.get('bytes_down_per_site'))}/{_mb(ev.get('bytes_up_per_site'))}"
            train = (f"{ev['round']:>5} {_fmt(ev.get('train_loss')):>8} {ev.get('sites', 0):>5} "
                     f"{_fmt(ev.get('round_seconds'), 1):>7} {mb:>11}")
            model, prefix = ev.get("evaluated_model"), "eval_"
        if model is None:
            return "\n".join(out + [f"{train} | {'-':>7}"])
        name = "initial" if model == 0 else f"round {model}"
        sites = " ".join(f"{k[len(prefix) + 4:]}={_fmt(v)}" for k, v in sorted(ev.items())
                         if k.startswith(prefix + "auc_"))
        out.append(f"{train} | {name:>7} {_fmt(ev.get(prefix + 'pooled_auc')):>10} "
                   f"{_fmt(ev.get(prefix + 'threshold'), 3):>6} "
                   f"{_fmt(ev.get(prefix + 'sens'), 2):>6} {_fmt(ev.get(prefix + 'spec'), 2):>6}  {sites}")
        return "\n".join(out)


def _mb(v: Any) -> str:
    return "-" if v is None else f"{float(v) / 1e6:.1f}"


def _privacy(ev: dict[str, Any]) -> str:
    """Privacy spent so far, when DP is on (metrics.csv columns epsilon / hist_epsilon at dp_delta)."""
    parts = [f"{label}={_fmt(ev[key], 3)}" for key, label in (("epsilon", "eps"), ("hist_epsilon", "hist-eps"))
             if ev.get(key) is not None]
    return f"  {' '.join(parts)} (delta={ev.get('dp_delta')})" if parts else ""


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{float(v):.{digits}f}"


def follow_run(rundir: RunDir, flwr_run: subprocess.Popen, superlink: subprocess.Popen,
               tick: Callable[[], list[str]] | None = None) -> dict[str, Any]:
    """Print events until the run ends; return status.json (or a synthetic failure).

    `tick` is called every loop (proxy supervision, refused keys); its lines are printed."""
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
        for text in tick() if tick is not None else []:
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
