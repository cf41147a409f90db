"""`mammo-sim compare`: two arms paired on the same validation images (per seed and mean over seeds)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from mammo_fl.common.evaluation.metrics import paired_mean_auc_difference
from mammo_fl.common.utils.errors import ConfigError, DataError
from mammo_fl.simulations.pairs import Arm, compare_arms, format_comparison

N_IMAGES = 80


def _val(seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"image_id": [f"img{i:03d}" for i in range(N_IMAGES)],
                         "patient_id": [f"P{i // 4:02d}" for i in range(N_IMAGES)],
                         "label": (rng.random(N_IMAGES) < 0.3).astype(int)})


def _write(run, name: str, skill: float, seed: int) -> None:
    val = _val()
    noise = np.random.default_rng(seed + int(skill * 100)).normal(size=N_IMAGES)
    (run / "predictions").mkdir(parents=True, exist_ok=True)
    val.assign(malignant_prob=1 / (1 + np.exp(-(skill * val["label"] + noise)))).to_csv(run / "predictions" / name,
                                                                                          index=False)


@pytest.fixture()
def runs(tmp_path):
    """Run A: a better federated arm; run B: a worse one, plus its pooled arm (3 seeds, n = 20 and 40, K = 3)."""
    for seed in range(3):
        for n in (20, 40):
            noise = seed + 10 * n  # each job its own score noise
            _write(tmp_path / "A", f"federated_k3_n{n}_seed{seed}.csv", 2.5, noise)
            _write(tmp_path / "B", f"federated_k3_n{n}_seed{seed}.csv", 0.8, noise)
            _write(tmp_path / "B", f"pooled_n{n}_seed{seed}.csv", 2.5, noise)
    _write(tmp_path / "B", "local_k3_n20_seed0_site_00.csv", 1.0, 0)  # not an arm compare pairs
    return tmp_path


def test_better_arm_wins_in_every_seed_with_ci_above_zero(runs):
    result = compare_arms(Arm.parse(str(runs / "A")), Arm.parse(str(runs / "B")), resamples=300)
    per_seed, summary = result.per_seed, result.summary
    assert len(per_seed) == 6 and set(per_seed["k_sites"]) == {3}
    assert (per_seed["difference"] > 0).all()
    assert list(summary["patients"]) == [20, 40] and (summary["seeds"] == 3).all()
    row = summary.iloc[0]
    assert row["a_better"] == 3 and row["ci_low"] > 0
    assert row["ci_low"] <= row["mean_difference"] <= row["ci_high"]
    assert row["mean_difference"] == pytest.approx(per_seed[per_seed["patients"] == 20]["difference"].mean())
    # the training-seed interval: a t-interval over the 3 seeds' differences, around the same mean
    diffs = per_seed[per_seed["patients"] == 20]["difference"].to_numpy()
    half = 4.302653 * diffs.std(ddof=1) / np.sqrt(3)  # t(0.975, 2 df)
    assert row["seed_sd"] == pytest.approx(diffs.std(ddof=1))
    assert (row["seed_ci_low"], row["seed_ci_high"]) == pytest.approx((diffs.mean() - half, diffs.mean() + half))
    (over,) = result.overall.itertuples()  # both sizes, all seeds: one mean, narrower than one size's CI
    assert (over.sizes, over.jobs, over.a_better) == (2, 6, 6)
    assert over.mean_difference == pytest.approx(per_seed["difference"].mean())
    assert over.ci_high - over.ci_low < row["ci_high"] - row["ci_low"]


def test_an_arm_can_span_runs_of_one_grid(runs, tmp_path):
    """Sizes run apart (two invocations) make one arm; a job found in two runs is refused."""
    for n in (20, 40):
        part = tmp_path / f"A{n}" / "predictions"
        part.mkdir(parents=True)
        for seed in range(3):
            name = f"federated_k3_n{n}_seed{seed}.csv"
            (part / name).write_bytes((runs / "A" / "predictions" / name).read_bytes())
    split = compare_arms(Arm.parse(f"{tmp_path / 'A20'},{tmp_path / 'A40'}"), Arm.parse(str(runs / "B")),
                         resamples=100)
    whole = compare_arms(Arm.parse(str(runs / "A")), Arm.parse(str(runs / "B")), resamples=100)
    pd.testing.assert_frame_equal(split.per_seed, whole.per_seed)
    assert split.overall["mean_difference"].iloc[0] == pytest.approx(whole.overall["mean_difference"].iloc[0])
    with pytest.raises(ConfigError, match="in both"):
        compare_arms(Arm.parse(f"{runs / 'A'},{tmp_path / 'A20'}"), Arm.parse(str(runs / "B")))
    # sizes scored on other validation images (another target joined in): per-size lines, no common mean
    for arm, n, prefix in (("A40", 40, "x"), ("B40", 40, "x"), ("B20", 20, "")):
        folder = tmp_path / arm / "predictions"
        folder.mkdir(parents=True, exist_ok=True)
        for seed in range(3):
            name = f"federated_k3_n{n}_seed{seed}.csv"
            frame = pd.read_csv(runs / arm[0] / "predictions" / name, dtype={"image_id": str})
            frame.assign(image_id=prefix + frame["image_id"]).to_csv(folder / name, index=False)
    mixed = compare_arms(Arm.parse(f"{tmp_path / 'A20'},{tmp_path / 'A40'}"),
                         Arm.parse(f"{tmp_path / 'B20'},{tmp_path / 'B40'}"), resamples=50)
    assert len(mixed.summary) == 2 and mixed.overall.empty and mixed.no_overall == (3,)


def test_federated_against_pooled_of_the_same_run(runs):
    result = compare_arms(Arm.parse(f"{runs / 'B'}:federated"), Arm.parse(f"{runs / 'B'}:pooled"), resamples=200)
    assert len(result.per_seed) == 6
    assert (result.summary["mean_difference"] < 0).all()  # the pooled arm is the better one here


def test_one_seed_gets_no_interval_over_seeds(runs):
    only = runs / "B_seed0" / "predictions"
    only.mkdir(parents=True)
    for name in ("federated_k3_n20_seed0.csv", "pooled_n20_seed0.csv"):
        (only / name).write_bytes((runs / "B" / "predictions" / name).read_bytes())
    arms = Arm.parse(f"{only.parent}:federated"), Arm.parse(f"{only.parent}:pooled")
    single = compare_arms(*arms, resamples=50)
    assert single.summary["seed_sd"].isna().all() and "over seeds sd" not in format_comparison(*arms, single)


def test_identical_arms_differ_by_exactly_zero():
    val = _val()
    scores = [np.linspace(0, 1, N_IMAGES), np.random.default_rng(1).random(N_IMAGES)]
    res = paired_mean_auc_difference(val["label"], scores, scores, n=200, groups=val["patient_id"])
    assert res.difference == 0.0 and res.ci == (0.0, 0.0)


def test_mismatched_or_missing_runs_are_one_line_errors(runs, tmp_path):
    with pytest.raises(ConfigError, match="pooled or federated"):
        Arm.parse(f"{runs / 'A'}:local")
    with pytest.raises(DataError, match="no pooled predictions"):
        compare_arms(Arm.parse(f"{runs / 'A'}:pooled"), Arm.parse(str(runs / "B")))
    other = tmp_path / "C" / "predictions"
    other.mkdir(parents=True)
    _val().head(40).assign(malignant_prob=0.5).to_csv(other / "federated_k3_n20_seed0.csv", index=False)
    with pytest.raises(DataError, match="other validation images"):
        compare_arms(Arm.parse(str(runs / "A")), Arm.parse(str(tmp_path / "C")))
    proc = subprocess.run([sys.executable, "-m", "mammo_fl.simulations.cli", "compare", str(tmp_path / "nope"),
                           str(runs / "B")], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr


def test_cli_prints_and_writes_the_comparison(runs, tmp_path):
    out = tmp_path / "cmp.csv"
    proc = subprocess.run([sys.executable, "-m", "mammo_fl.simulations.cli", "compare", str(runs / "A"),
                           str(runs / "B"), "--resamples", "100", "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "mean over seeds" in proc.stdout and "A better in 3/3 seeds" in proc.stdout
    assert "2 sizes K=3" in proc.stdout and "A better in 6/6 jobs" in proc.stdout
    assert proc.stdout.count("over seeds sd") == 2 and proc.stdout.count("over jobs sd") == 1
    table = pd.read_csv(out)
    assert set(table["kind"]) == {"seed", "mean", "overall"} and len(table) == 9
