"""How one federated mammo-sim run's cost grows with the number of virtual sites K.

Used by `bench_simulation.py --sites 2,5,10,20`: one federated run per K at a fixed total number
of patients (so the data-proportional work is the same for every K), each in its own `mammo-sim`
process, timed, with the peak memory of its whole process tree (driver, Ray's GCS/raylet, the
actor workers) sampled from /proc. A straight-line fit over K splits each cost into a part
that does not depend on K (training on the same images, start-up) and a per-site part.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def _tree(root: int) -> list[int]:
    tree, out, todo = _children(), [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(tree.get(pid, []))
    return out


def _pss_kb(pid: int) -> int:
    """Proportional set size (shared pages split between their users; RSS if smaps_rollup is missing)."""
    for path, key in ((f"/proc/{pid}/smaps_rollup", "Pss:"), (f"/proc/{pid}/status", "VmRSS:")):
        try:
            with open(path) as fh:
                for line in fh:
                    if line.startswith(key):
                        return int(line.split()[1])
        except OSError:
            continue
    return 0


class TreeMemory:
    """Samples the summed PSS of a process and all its descendants; keeps the peak."""

    def __init__(self, pid: int, interval_s: float = 1.0) -> None:
        self.pid, self.interval_s = pid, interval_s
        self.peak_mb, self.peak_processes = 0.0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            pids = _tree(self.pid)
            total = sum(_pss_kb(p) for p in pids) / 1024
            if total > self.peak_mb:
                self.peak_mb, self.peak_processes = total, len(pids)


@dataclass
class ScalingRow:
    k: int
    patients: int
    wall_s: float  # the whole mammo-sim process (imports, cached data, the federated job, scoring)
    federated_job_s: float
    ray_init_s: float
    flower_startup_s: float  # simulation minus rounds minus ray init: Flower start-up and shutdown
    rounds_s: float
    site_train_sum_s: float  # all sites' training (incl. each message's data/model set-up), summed
    evaluate_s: float
    peak_memory_mb: float
    peak_processes: int


def run_one(k: int, patients: int, rounds: int, local_epochs: int, out: Path, extra: list[str]) -> ScalingRow:
    """One federated run with K sites (a fresh mammo-sim process); raises on failure."""
    cmd = [sys.executable, "-m", "mammo_fl.simulations.cli", "--preset", "quick", "--out", str(out),
           "--set", "experiment.methods=['federated']", "--set", f"experiment.sizes=[{patients}]",
           "--set", f"experiment.k_sites=[{k}]", "--set", f"finetune.rounds={rounds}",
           "--set", f"finetune.local_epochs={local_epochs}", *extra]
    start = time.perf_counter()
    with open(out.parent / f"k{k}.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        with TreeMemory(proc.pid) as memory:
            code = proc.wait()
    wall = time.perf_counter() - start
    if code != 0:
        raise RuntimeError(f"K={k}: mammo-sim exited with {code}; see {out.parent / f'k{k}.log'}")
    record = json.loads((out / "run.json").read_text())
    job = next(j for j in record["grid"]["jobs"] if j["method"] == "federated")
    if job["status"] != "ok":
        raise RuntimeError(f"K={k}: federated job failed: {record['grid']['failures']}")
    rounds_s = float(job.get("round_seconds", 0.0))
    return ScalingRow(
        k=k, patients=int(job["patients"]), wall_s=round(wall, 1), federated_job_s=float(job["seconds"]),
        ray_init_s=float(job["ray_init_seconds"]),
        flower_startup_s=round(max(0.0, float(job["simulation_seconds"]) - rounds_s - float(job["ray_init_seconds"])), 1),
        rounds_s=rounds_s, site_train_sum_s=float(job.get("sum_site_train_seconds", 0.0)),
        evaluate_s=float(job.get("evaluate_seconds", 0.0)), peak_memory_mb=round(memory.peak_mb, 0),
        peak_processes=memory.peak_processes,
    )


def fit_per_site(rows: list[ScalingRow], field: str) -> tuple[float, float]:
    """Least-squares `value = fixed + per_site * K` over the measured K."""
    ks = np.array([r.k for r in rows], float)
    values = np.array([getattr(r, field) for r in rows], float)
    per_site, fixed = np.polyfit(ks, values, 1) if len(rows) > 1 else (0.0, float(values[0]))
    return float(fixed), float(per_site)


FIELDS = (("federated_job_s", "federated job wall"), ("ray_init_s", "Ray start-up"),
          ("flower_startup_s", "Flower start-up + shutdown"), ("site_train_sum_s", "sites' training, summed"),
          ("evaluate_s", "federated evaluation"), ("peak_memory_mb", "peak memory (MB, process tree PSS)"))


def format_report(rows: list[ScalingRow]) -> str:
    head = (f"{'K':>3} {'patients':>8} {'wall s':>7} {'fed job s':>9} {'ray init':>8} {'flower':>7} "
            f"{'rounds':>7} {'train sum':>9} {'eval':>6} {'peak MB':>8} {'procs':>5}")
    lines = [head]
    for r in rows:
        lines.append(f"{r.k:>3} {r.patients:>8} {r.wall_s:>7.1f} {r.federated_job_s:>9.1f} {r.ray_init_s:>8.1f} "
                     f"{r.flower_startup_s:>7.1f} {r.rounds_s:>7.1f} {r.site_train_sum_s:>9.1f} {r.evaluate_s:>6.1f} "
                     f"{r.peak_memory_mb:>8.0f} {r.peak_processes:>5}")
    lines.append("\nlinear fit over K: value = fixed + per_site x K")
    for field, name in FIELDS:
        fixed, per_site = fit_per_site(rows, field)
        lines.append(f"  {name:<36} fixed {fixed:8.1f}   per site {per_site:+7.2f}")
    startup = [(r.ray_init_s + r.flower_startup_s) / r.federated_job_s for r in rows if r.federated_job_s]
    lines.append(f"  Ray + Flower start-up share of the federated job: "
                 + ", ".join(f"K={r.k} {s:.0%}" for r, s in zip(rows, startup)))
    return "\n".join(lines)


def plot(rows: list[ScalingRow], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = [r.k for r in rows]
    parts = [("Ray start-up", [r.ray_init_s for r in rows]),
             ("Flower start-up/shutdown", [r.flower_startup_s for r in rows]),
             ("rounds: sites' training + messaging", [max(0.0, r.rounds_s - r.evaluate_s) for r in rows]),
             ("rounds: federated evaluation", [r.evaluate_s for r in rows]),
             ("central scoring, set-up", [max(0.0, r.federated_job_s - r.rounds_s - r.ray_init_s - r.flower_startup_s)
                                          for r in rows])]
    fig, (ax, mem) = plt.subplots(1, 2, figsize=(10, 4), dpi=120)
    bottom = np.zeros(len(rows))
    x = np.arange(len(rows))
    for name, values in parts:
        ax.bar(x, values, bottom=bottom, label=name)
        bottom += np.array(values)
    ax.set_xticks(x, [f"K={k}" for k in ks])
    ax.set_ylabel("seconds (one federated run)")
    ax.set_title(f"wall time at {rows[0].patients} patients in total")
    ax.legend(fontsize=7)
    mem.plot(ks, [r.peak_memory_mb for r in rows], marker="o")
    mem.set_xlabel("virtual sites K")
    mem.set_ylabel("peak memory, MB (PSS of the process tree)")
    mem.set_xticks(ks)
    mem.set_ylim(bottom=0)
    mem.grid(alpha=0.3)
    mem.set_title("peak memory")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def run_scaling(ks: list[int], patients: int, rounds: int, local_epochs: int, work: Path,
                extra: list[str]) -> list[ScalingRow]:
    rows = []
    for k in ks:
        print(f"K={k}: one federated run at {patients} patients ...", flush=True)
        rows.append(run_one(k, patients, rounds, local_epochs, work / f"k{k}", extra))
        print(f"  {rows[-1].wall_s:.0f} s, peak {rows[-1].peak_memory_mb:.0f} MB", flush=True)
        (work / "scaling.json").write_text(json.dumps([asdict(r) for r in rows], indent=2))
    return rows
