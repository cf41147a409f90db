"""The K-scaling benchmark's own parts: the per-site fit, the process-tree memory sampler, the report."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from sim_scaling import ScalingRow, TreeMemory, fit_per_site, format_report, plot  # noqa: E402


def _row(k: int, train: float, memory: float) -> ScalingRow:
    return ScalingRow(k=k, patients=72, wall_s=60 + 3 * k, federated_job_s=40 + 3 * k, ray_init_s=5.0,
                      flower_startup_s=4.0, rounds_s=30 + 3 * k, site_train_sum_s=train, evaluate_s=5 + k,
                      peak_memory_mb=memory, peak_processes=12)


def test_fit_splits_fixed_and_per_site_cost():
    rows = [_row(k, 20 + 1.5 * k, 1500.0) for k in (2, 5, 10, 20)]
    fixed, per_site = fit_per_site(rows, "site_train_sum_s")
    assert fixed == pytest.approx(20.0) and per_site == pytest.approx(1.5)
    assert fit_per_site(rows, "peak_memory_mb") == pytest.approx((1500.0, 0.0), abs=1e-6)
    report = format_report(rows)
    assert "per site   +1.50" in report and "K=20" in report


def test_tree_memory_counts_children(tmp_path):
    code = "import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', " \
           "'x = bytearray(60 * 2**20); import time; time.sleep(4)']); time.sleep(4); p.wait()"
    proc = subprocess.Popen([sys.executable, "-c", code])
    with TreeMemory(proc.pid, interval_s=0.2) as memory:
        proc.wait()
    assert memory.peak_processes >= 2 and memory.peak_mb > 60  # the child's 60 MB buffer is in the sum


def test_scaling_plot_is_written(tmp_path):
    path = plot([_row(k, 20 + k, 1500 + 10 * k) for k in (2, 5)], tmp_path / "s.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
