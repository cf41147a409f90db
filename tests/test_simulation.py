"""mammo-sim: presets, result files, summary table, plot, and a tiny grid through the real Flower simulation."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from common.config import load_config
from common.errors import ConfigError
from simulations.experiment import Job, effective_sizes, plan_jobs
from simulations.plot import plot_transfer_curves
from simulations.results import RESULT_COLUMNS, append_rows, read_results, result_row, summary_table
from simulations.settings import parse_settings


@pytest.mark.parametrize("preset", ["quick", "full", "paper"])
def test_presets_parse(preset):
    settings = parse_settings(load_config(preset, "sim"), preset=preset)
    assert settings.finetune.total_epochs == settings.finetune.rounds * settings.finetune.local_epochs
    if preset == "paper":
        assert settings.finetune.total_epochs == 200 and settings.finetune.lr == 1e-5
        assert settings.source.require_model and settings.target.require_data
    if preset == "full":
        assert settings.experiment.sizes == [20, 30, 40, 50, 60, 72] and settings.experiment.k_sites == [2, 3, 5]


def test_bad_settings_are_config_errors():
    base = load_config("quick", "sim")
    for override in ("experiment.methods=['magic']", "experiment.partition='random'", "finetune.rounds=0",
                     "experiment.sizes=[]", "finetune.strategy='sgd'"):
        with pytest.raises(ConfigError):
            parse_settings(load_config("quick", "sim", [override]))
    with pytest.raises(ConfigError, match="unknown config key"):
        load_config("quick", "sim", ["finetune.epochs=3"])
    base["extra"] = {}
    with pytest.raises(ConfigError, match="unknown config section"):
        parse_settings(base)


def test_grid_plan_equal_compute_and_clipping():
    settings = parse_settings(load_config("quick", "sim", ["experiment.k_sites=[2,5]", "experiment.seeds=[0,1]"]))
    sizes = effective_sizes([20, 40, 200], available=72)
    assert sizes == [20, 40, 72]
    jobs = plan_jobs(settings, sizes)
    assert jobs[0] == Job("none", 0, 0, 0)
    assert sum(j.method == "none" for j in jobs) == 1  # the source model is scored once
    assert sum(j.method == "pooled" for j in jobs) == 3 * 2
    assert sum(j.method == "federated" for j in jobs) == 3 * 2 * 2
    assert {j.k_sites for j in jobs if j.method == "local"} == {2, 5}


def _fake_results() -> pd.DataFrame:
    rows = []
    for n in (20, 40, 72):
        rows += [result_row(n, "none", 0, s, 0.6) for s in (0, 1)]
        rows += [result_row(n, "pooled", 0, s, 0.7 + n / 1000 + s / 100, images=4 * n) for s in (0, 1)]
        rows += [result_row(n, "federated", 3, s, 0.69 + n / 1000, images=4 * n) for s in (0, 1)]
        rows += [result_row(n, "local", 3, 0, 0.62 + i / 100, site=f"site_{i:02d}") for i in range(3)]
    rows.append(result_row(40, "federated", 5, 0, float("nan"), status="failed: boom"))
    return pd.DataFrame(rows)


def test_result_files_schema_table_and_plot(tmp_path):
    csv_path = tmp_path / "transfer_curve.csv"
    frame = _fake_results()
    append_rows(csv_path, frame.iloc[:5].to_dict("records"))
    append_rows(csv_path, frame.iloc[5:].to_dict("records"))  # appended without a second header
    results = read_results(csv_path)
    assert list(results.columns[:5]) == RESULT_COLUMNS
    assert len(results) == len(frame)
    table = summary_table(results)
    assert list(table["patients"]) == [20, 40, 72]
    assert {"none", "pooled", "federated K=3", "local K=3", "federated K=5"} <= set(table.columns)
    assert table.loc[table["patients"] == 20, "pooled"].item() == "0.725 ± 0.007"
    assert table.loc[table["patients"] == 20, "local K=3"].item() == "0.630 ± 0.010"  # spread over sites
    assert table.loc[table["patients"] == 40, "federated K=5"].item() == "failed"
    assert table.loc[table["patients"] == 20, "federated K=5"].item() == "-"
    png = plot_transfer_curves(results, tmp_path / "curve.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_bad_preset_is_one_line_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "simulations.cli", "--preset", "nope", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "unknown sim preset 'nope'" in proc.stderr
    assert "Traceback" not in proc.stderr
