"""The federated operating point: threshold from pooled histograms vs raw scores, per-site counts that
add up to the pooled ones, targets and settings, the run config's dotted form, the kept histograms."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import pytest

from mammo_fl.common.evaluation.metrics import (
    bootstrap_auc_ci,
    bootstrap_auc_ci_from_histograms,
    score_histograms,
    sens_spec_at,
    sens_spec_from_histograms,
    threshold_at_sensitivity,
    threshold_at_specificity,
)
from mammo_fl.common.evaluation.operating_point import (
    Confusion,
    Target,
    checkpoint_threshold,
    confusion_at,
    target_from_settings,
    threshold_for_target,
)
from mammo_fl.common.utils.errors import ConfigError
from mammo_fl.server.histogram_store import load_histograms, save_round_histograms
from mammo_fl.server.operating_point import operating_point_columns, operating_point_record
from mammo_fl.server.pooled_metrics import pool_histograms
from mammo_fl.server.settings import FederationSettings
from mammo_fl.server.validate import Screened

BINS = 1000


def _scores(seed: int, n: int = 300) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    return y, np.clip(rng.beta(2 + 3 * y, 4 - 2 * y), 0, 1)


def _site(name: str, y: np.ndarray, s: np.ndarray) -> Screened:
    neg, pos = score_histograms(y, s, BINS)
    return Screened(0, name, None, {"num-examples": int(y.size), "num-pos": int(y.sum()),
                                    "hist-neg": neg.tolist(), "hist-pos": pos.tolist()})


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("value", [0.5, 0.8, 0.9, 0.95, 1.0])
def test_threshold_from_histograms_is_the_raw_score_threshold_within_one_bin(seed, value):
    y, s = _scores(seed)
    neg, pos = score_histograms(y, s, BINS)
    for kind, raw in (("specificity", threshold_at_specificity(y, s, value)),
                      ("sensitivity", threshold_at_sensitivity(y, s, value))):
        hist = threshold_for_target(neg, pos, Target(kind, value))
        assert abs(hist - raw) <= 1 / BINS + 1e-12, (kind, hist, raw)
        # and it meets the target on the raw scores, as the pooled counts say it does
        sens, spec = sens_spec_at(y, s, hist)
        assert (spec if kind == "specificity" else sens) >= value - 1e-12
        assert (sens, spec) == pytest.approx(sens_spec_from_histograms(neg, pos, hist))


def test_threshold_is_the_most_sensitive_edge_meeting_the_specificity():
    neg = np.array([3, 3, 2, 2, 0])  # 10 negatives over 5 bins
    pos = np.array([0, 1, 1, 2, 6])
    t = threshold_for_target(neg, pos, Target("specificity", 0.6))
    assert t == pytest.approx(2 / 5)  # below edge 2: 6 negatives = 0.6; edge 1 gives 0.3
    assert threshold_for_target(neg, pos, Target("specificity", 0.61)) == pytest.approx(3 / 5)
    assert threshold_for_target(neg, pos, Target("sensitivity", 0.8)) == pytest.approx(3 / 5)  # 8 of 10 at/above
    assert threshold_for_target(neg, pos, Target("sensitivity", 0.81)) == pytest.approx(2 / 5)
    assert threshold_for_target(neg, pos, Target("fixed", 0.25)) == 0.25
    assert math.isnan(threshold_for_target(np.zeros(5), pos, Target("specificity", 0.9)))
    assert math.isnan(threshold_for_target(neg, np.zeros(5), Target("sensitivity", 0.9)))


def test_per_site_counts_add_up_to_the_pooled_counts():
    sites = [_site(name, *_scores(seed, n)) for name, seed, n in (("a", 3, 120), ("b", 4, 60), ("c", 5, 200))]
    summary = pool_histograms(sites, BINS, Target("specificity", 0.9))
    total = sum(summary.site_confusion.values(), Confusion())
    assert total == summary.confusion == confusion_at(summary.neg_hist, summary.pos_hist, summary.threshold)
    assert total.tp + total.fn == summary.n_pos and total.tn + total.fp == summary.n_neg
    assert summary.spec >= 0.9 and (summary.sens, summary.spec) == (total.sens, total.spec)
    # pooled sens/spec are the sites' counts pooled, not a mean of the sites' rates
    for name, counts in summary.site_confusion.items():
        assert (summary.site_sens[name], summary.site_spec[name]) == (counts.sens, counts.spec)
    row = operating_point_columns(summary)
    assert row["threshold"] == summary.threshold and {"sens_a", "spec_a", "sens_c", "spec_c"} <= set(row)


def test_a_fixed_threshold_still_works_and_empty_evaluation_is_nan():
    sites = [_site("a", *_scores(6))]
    fixed = pool_histograms(sites, BINS, 0.5)
    neg, pos = np.asarray(sites[0].metrics["hist-neg"]), np.asarray(sites[0].metrics["hist-pos"])
    assert fixed.threshold == 0.5 and (fixed.sens, fixed.spec) == sens_spec_from_histograms(neg, pos, 0.5)
    empty = pool_histograms([], BINS, Target("specificity", 0.9))
    assert math.isnan(empty.threshold) and math.isnan(empty.sens) and empty.site_confusion == {}


def test_targets_from_settings():
    assert FederationSettings().operating_target() == Target("specificity", 0.9)
    assert target_from_settings(0.9, 0.85, 0.5) == Target("sensitivity", 0.85)  # sensitivity wins when set
    assert target_from_settings(0.0, 0.0, 0.3) == Target("fixed", 0.3)
    assert Target("specificity", 0.9).describe() == "specificity >= 0.9"
    with pytest.raises(ConfigError, match="operating-point-specificity"):
        FederationSettings.from_run_config({"operating-point-specificity": 1.2})
    with pytest.raises(ConfigError, match="kind"):
        Target("youden", 0.5)


def _run_config(tmp_path: Path, overrides: list[str], config: Path | None = None) -> dict:
    from mammo_fl.server.run_config import load_run_config

    args = argparse.Namespace(config=config, overrides=overrides, model=tmp_path / "m.pt", resume=False,
                              rounds=None, min_sites=None)
    return load_run_config(args, tmp_path)


def test_user_facing_dotted_keys_map_to_flat_run_config_keys(tmp_path):
    config = _run_config(tmp_path, ["operating-point.specificity=0.95"])
    assert config["operating-point-specificity"] == 0.95
    config = _run_config(tmp_path, ["operating-point-sensitivity=0.8"])
    assert FederationSettings.from_run_config(config).operating_target() == Target("sensitivity", 0.8)
    file = tmp_path / "fed.toml"
    file.write_text("[operating-point]\nspecificity = 0.85\n")
    assert _run_config(tmp_path, [], config=file)["operating-point-specificity"] == 0.85
    with pytest.raises(ConfigError):
        _run_config(tmp_path, ["operating-point.youden=1"])


def test_checkpoint_record_and_threshold():
    row = {"round": 4, "threshold": 0.437, "sens": 0.8, "spec": 0.9, "n_pos": 10, "n_neg": 30}
    record = operating_point_record(row, FederationSettings())
    assert record["threshold"] == 0.437 and record["target"] == {"kind": "specificity", "value": 0.9}
    assert record["round"] == 4 and record["tta"] is False
    assert checkpoint_threshold({"operating_point": record}) == 0.437
    assert checkpoint_threshold({"operating_point": {**record, "threshold": None}}) is None
    assert checkpoint_threshold({}) is None and checkpoint_threshold(None) is None


def test_histogram_bootstrap_ci_matches_the_image_bootstrap():
    y, s = _scores(7, 200)
    neg, pos = score_histograms(y, s, BINS)
    lo, hi = bootstrap_auc_ci_from_histograms(neg, pos, n=2000, seed=1)
    raw_lo, raw_hi = bootstrap_auc_ci(y, s, n=2000, seed=1)
    assert abs(lo - raw_lo) < 0.02 and abs(hi - raw_hi) < 0.02 and lo < hi
    assert math.isnan(bootstrap_auc_ci_from_histograms(neg, np.zeros(BINS))[0])


def test_histograms_are_kept_per_round_and_a_redo_replaces_later_rounds(tmp_path):
    h = {"a/b": (np.arange(10), np.arange(10)[::-1]), "c": (np.ones(10, int), np.zeros(10, int))}
    for rnd in (0, 1, 2):
        save_round_histograms(tmp_path, rnd, h)
    save_round_histograms(tmp_path, 1, {"c": h["c"]})  # resumed after round 0: rounds 1 and 2 redone
    kept = load_histograms(tmp_path)
    assert list(kept) == [0, 1] and set(kept[0]) == {"a/b", "c"} and set(kept[1]) == {"c"}
    np.testing.assert_array_equal(kept[0]["a/b"][1], np.arange(10)[::-1])
