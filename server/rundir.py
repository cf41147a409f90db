"""The run folder (RUNDIR): per-round checkpoints, metrics table/CSV/JSON, AUC plot, resume state.

Write order per round = commit protocol: checkpoint (atomic) -> strategy state -> metrics ->
`state.json` last. A server killed at any point resumes from the last round whose state.json
was written, so no round is lost or counted twice.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from pathlib import Path
from typing import Any

from mammo_fl.common.utils.atomic import atomic_path, atomic_write_text
from mammo_fl.common.utils.errors import MammoError

# One row per global model: round 0 = the initial model, round r = round_r.pt. Its AUC columns come from
# the next round's replies or the final evaluation (`evaluated_by`); server/round_rows.py.
BASE_COLUMNS = [
    "round", "pooled_auc", "sites", "eval_sites", "sens", "spec", "threshold", "n_pos", "n_neg", "train_loss",
    "round_seconds", "max_site_train_seconds", "sum_site_train_seconds", "overhead_seconds", "evaluate_seconds",
    "bytes_down_per_site", "bytes_up_per_site",
    "rejected", "site_names",
    "evaluated_by", "max_site_eval_seconds", "max_site_seconds", "wire",
]


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


class RunDir:
    def __init__(self, root: str | Path, launch_id: str = "") -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.launch_id = launch_id
        self._lock_fh: Any = None

    def lock(self, timeout_s: float = 120.0) -> None:
        """Exclusive writer lock: a stale ServerApp of a killed launch must finish before we write."""
        import fcntl

        self._lock_fh = open(self.lock_file, "a+")  # noqa: SIM115 - held for the run
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(self._lock_fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self._lock_fh.truncate(0)
                self._lock_fh.write(str(os.getpid()))  # lets mammo-server --resume stop a stale writer
                self._lock_fh.flush()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise MammoError(f"{self.root} is being written by another ServerApp") from None
                time.sleep(1.0)

    def writer_pid(self) -> int:
        """PID written by the last ServerApp that held the writer lock (0 when none)."""
        try:
            return int(self.lock_file.read_text().strip() or 0)
        except (OSError, ValueError):
            return 0

    def prepare_launch(self, resume: bool) -> str:
        """Refuse to overwrite a finished round without --resume; clear the last launch's event log.

        Returns "resume", "nothing-to-resume" or "fresh"."""
        state = self.load_state()
        if state is not None and not resume:
            raise MammoError(
                f"{self.root} already holds a run (round {state['completed_round']} done): "
                "add --resume to continue it or choose another --out"
            )
        self.status_file.unlink(missing_ok=True)
        if resume and state is not None:
            return "resume"
        self.events.unlink(missing_ok=True)
        return "nothing-to-resume" if resume else "fresh"

    # paths
    def round_checkpoint(self, rnd: int) -> Path:
        return self.root / f"round_{rnd:03d}.pt"

    @property
    def final(self) -> Path:
        return self.root / "final.pt"

    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    @property
    def strategy_file(self) -> Path:
        return self.root / "strategy_state.npz"

    @property
    def metrics_json(self) -> Path:
        return self.root / "metrics.json"

    @property
    def metrics_csv(self) -> Path:
        return self.root / "metrics.csv"

    @property
    def plot(self) -> Path:
        return self.root / "auc_per_round.png"

    @property
    def lock_file(self) -> Path:
        return self.root / ".writer.lock"

    @property
    def events(self) -> Path:
        return self.root / "events.jsonl"

    @property
    def status_file(self) -> Path:
        return self.root / "status.json"

    # events (mammo-server tails this to print its table)
    def event(self, event_name: str, /, **fields: Any) -> None:
        record = {"time": time.time(), "event": event_name, "launch_id": self.launch_id, **fields}
        line = json.dumps(_json_safe(record), sort_keys=True)
        with open(self.events, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")

    def set_status(self, status: str, **fields: Any) -> None:
        record = {"status": status, "launch_id": self.launch_id, **fields}
        atomic_write_text(self.status_file, json.dumps(_json_safe(record), indent=1))

    # metrics
    def load_rows(self) -> list[dict[str, Any]]:
        if not self.metrics_json.exists():
            return []
        return json.loads(self.metrics_json.read_text())

    def write_rows(self, rows: list[dict[str, Any]]) -> None:
        atomic_write_text(self.metrics_json, json.dumps(_json_safe(rows), indent=1))
        site_cols = sorted({k for r in rows for k in r if k not in BASE_COLUMNS})
        columns = BASE_COLUMNS + site_cols
        with atomic_path(self.metrics_csv) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns, restval="")
            writer.writeheader()
            for r in rows:
                writer.writerow({k: ("" if v is None else v) for k, v in _json_safe(r).items() if k in columns})
        self._plot(rows)

    def _plot(self, rows: list[dict[str, Any]]) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
        try:
            rounds = [r["round"] for r in rows]
            ax.plot(rounds, [_nan(r.get("pooled_auc")) for r in rows], "o-", lw=2, label="pooled")
            for col in sorted({k for r in rows for k in r if k.startswith("auc_")}):
                ax.plot(rounds, [_nan(r.get(col)) for r in rows], ".--", lw=1, label=col[4:])
            ax.set_xlabel("round")
            ax.set_ylabel("validation AUC")
            ax.set_ylim(0.0, 1.0)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
            fig.tight_layout()
            fig.savefig(self.plot)
        finally:
            plt.close(fig)

    # resume state
    def commit_round(self, rnd: int, extra: dict[str, Any]) -> None:
        state = {"completed_round": rnd, "checkpoint": self.round_checkpoint(rnd).name, **extra}
        atomic_write_text(self.state_file, json.dumps(_json_safe(state), indent=1))

    def load_state(self) -> dict[str, Any] | None:
        if not self.state_file.exists():
            return None
        try:
            return json.loads(self.state_file.read_text())
        except json.JSONDecodeError as exc:
            raise MammoError(f"{self.state_file}: corrupt resume state ({exc.msg})") from None


def _nan(v: Any) -> float:
    return math.nan if v is None else float(v)
