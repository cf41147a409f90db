"""What the coordinator accepts (server/screening.py, server/safeguards.py), on real Flower reply messages:
every rejection names the site and the cause; clipping, num-examples caps, histogram checks, the
finite-aggregate check, the robust strategies against a scaled update, and resume of the join registry."""

from __future__ import annotations

import numpy as np
import pytest
from safeguard_support import (
    GLOBAL,
    eval_reply,
    screen_eval,
    screen_train,
    site_arrays,
    train_reply,
)

from mammo_fl.common.utils.errors import ConfigError, MammoError
from mammo_fl.server.rundir import RunDir
from mammo_fl.server.safeguard_settings import ScreeningSettings
from mammo_fl.server.safeguards import Safeguards
from mammo_fl.server.screening import STATS, WEIGHTS, group_norms, histogram_problem, screen_norms, update_norm
from mammo_fl.server.settings import FederationSettings
from mammo_fl.server.strategy import aggregate, build_strategy
from mammo_fl.server.validate import Screened


def _screen_round(guards: Safeguards, replies: dict) -> tuple:
    accepted, rejected = screen_train(replies)
    result = guards.screen_train(accepted, GLOBAL)
    return result, {r.site: r.reason for r in rejected + result.rejected}


def _guards(tmp_path, **screening) -> Safeguards:
    s = FederationSettings(screening=ScreeningSettings(**screening))
    return Safeguards.open(s, RunDir(tmp_path), resume=False)


def _scaled(factor: float, seed: int = 9) -> dict[str, np.ndarray]:
    honest = site_arrays(1.0, seed)
    out = dict(honest)
    for k in ("w", "bn.running_var"):
        out[k] = (GLOBAL[k] + factor * (honest[k] - GLOBAL[k])).astype(np.float32)
    return out


def test_every_train_rejection_names_the_site_and_the_cause(tmp_path, task_identity):
    near_max = {**site_arrays(1.0, 5), "w": np.full((4, 5), 3.0e38, np.float32)}  # finite, norm ~1e39
    nan = site_arrays(1.0, 6)
    nan["w"][0, 0] = np.nan
    replies = {
        1: train_reply("a", site_arrays(1.0, 1)),
        2: train_reply("b", site_arrays(1.2, 2)),
        3: train_reply("c", site_arrays(0.9, 3)),
        4: train_reply("scaled", _scaled(1000.0)),
        5: train_reply("greedy", site_arrays(1.0, 4), num_examples=2**62),
        6: train_reply("near-max", near_max),
        7: train_reply("nan", nan),
    }
    guards = _guards(tmp_path, action="reject")
    result, reasons = _screen_round(guards, replies)
    assert sorted(r.site for r in result.accepted) == ["a", "b", "c"]
    assert reasons["scaled"].startswith("weight update norm 1000 above the bound")
    assert "BatchNorm-statistics update norm 1000 above the bound" in reasons["scaled"]
    assert reasons["greedy"] == f"num-examples {2**62} exceeds screening.max-examples 1000000"
    assert reasons["near-max"].startswith("weight update norm 1.342e+39")  # float64: no overflow to inf
    assert "NaN/Inf" in reasons["nan"]
    fields = guards.screening_fields(result, [r for r in result.rejected])
    assert "scaled: weight update norm" in fields["rejected_sites"]
    assert "greedy: num-examples" in fields["rejected_sites"]
    assert fields["norm_scaled"] == pytest.approx(1000.0, rel=1e-3) and fields["norm_bound"] == pytest.approx(3.6)
    assert fields["bnstats_norm_scaled"] == pytest.approx(1000.0, rel=1e-3)


def test_a_non_finite_int8_update_is_still_rejected(tmp_path, task_identity):
    """int8 carries NaN/Inf as code -128, decoded as NaN: screening sees the decoded update."""
    inf = site_arrays(1.0, 6)
    inf["w"][1, 2] = np.inf
    replies = {1: train_reply("a", site_arrays(1.0, 1), wire="int8"),
               2: train_reply("b", site_arrays(1.2, 2), wire="int8"),
               3: train_reply("inf", inf, wire="int8")}
    result, reasons = _screen_round(_guards(tmp_path, action="reject"), replies)
    assert sorted(r.site for r in result.accepted) == ["a", "b"]
    assert "NaN/Inf" in reasons["inf"]


def test_clip_scales_an_update_back_onto_the_bound(tmp_path, task_identity):
    replies = {1: train_reply("a", site_arrays(1.0, 1)), 2: train_reply("b", site_arrays(2.0, 2)),
               3: train_reply("big", _scaled(1000.0))}
    result, reasons = _screen_round(_guards(tmp_path, norm_factor=3.0, action="clip"), replies)
    assert not reasons and len(result.accepted) == 3
    big = next(r for r in result.accepted if r.site == "big")
    clipped = group_norms(big.arrays, GLOBAL)  # each group: 3 x the lower median of 1, 2, 1000
    assert clipped[WEIGHTS] == pytest.approx(6.0, rel=1e-4) and clipped[STATS] == pytest.approx(6.0, rel=1e-4)
    direction = (big.arrays["w"] - GLOBAL["w"]).ravel()
    original = (_scaled(1000.0)["w"] - GLOBAL["w"]).ravel()
    assert np.dot(direction, original) / (np.linalg.norm(direction) * np.linalg.norm(original)) > 0.9999
    assert int(big.arrays["bn.num_batches_tracked"]) == 9  # integer buffers are not scaled
    (note,) = result.notes
    assert note.site == "big" and note.what == "clipped" and note.detail.endswith("clipped onto the bound")


def test_two_sites_cannot_drag_the_bound_up():
    """The lower median: with two sites, the bound follows the smaller update, not the attacker's."""
    reps = [Screened(1, "a", site_arrays(1.0, 1), {"num-examples": 5}),
            Screened(2, "evil", _scaled(1000.0), {"num-examples": 5})]
    result = screen_norms(reps, GLOBAL, ScreeningSettings(norm_factor=3.0, action="reject"))
    assert result.bounds[WEIGHTS] == pytest.approx(3.0, rel=1e-4) and [r.site for r in result.rejected] == ["evil"]


def test_a_scaled_weight_update_is_seen_behind_large_batchnorm_statistics():
    """BatchNorm statistics move far more than weights (pixel units); one norm over both would let a
    x1000 weight update through. Each group has its own bound."""
    honest = [Screened(i, f"h{i}", site_arrays(1.0, i, stats_step=5000.0), {"num-examples": 5}) for i in (1, 2)]
    sneaky = site_arrays(1.0, 3, stats_step=5000.0)
    sneaky["w"] = (GLOBAL["w"] + 1000 * (sneaky["w"] - GLOBAL["w"])).astype(np.float32)
    assert update_norm(sneaky, GLOBAL) < 1.1 * 5000  # the whole-update norm hardly moves
    result = screen_norms(honest + [Screened(3, "sneaky", sneaky, {"num-examples": 5})], GLOBAL,
                          ScreeningSettings(action="reject"))
    (rejected,) = result.rejected
    assert rejected.site == "sneaky" and rejected.reason.startswith("weight update norm 1000 above the bound 3")


def test_num_examples_capped_at_join_then_at_the_median_and_restored_on_resume(tmp_path, task_identity):
    guards = _guards(tmp_path, examples_factor=5.0)
    first = {1: train_reply("a", site_arrays(1.0, 1), 10), 2: train_reply("b", site_arrays(1.0, 2), 12),
             3: train_reply("c", site_arrays(1.0, 3), 11)}
    _screen_round(guards, first)
    guards.commit()
    resumed = Safeguards.open(guards.settings, RunDir(tmp_path), resume=True)
    assert resumed.registry == {"a": 10, "b": 12, "c": 11}
    second = {1: train_reply("a", site_arrays(1.0, 1), 10), 2: train_reply("b", site_arrays(1.0, 2), 12),
              3: train_reply("c", site_arrays(1.0, 3), 5000), 4: train_reply("new", site_arrays(1.0, 4), 900)}
    result, reasons = _screen_round(resumed, second)
    n = {r.site: r.metrics["num-examples"] for r in result.accepted}
    assert not reasons and n == {"a": 10, "b": 12, "c": 11, "new": 55}  # join cap; 5 x median_low(10,11,12,900)
    details = {note.site: note.detail for note in result.notes}
    assert details["c"] == "num-examples 5000 capped to 11 declared at join"
    assert "capped to 55 (5 x the round's median)" in details["new"]
    assert resumed.registry["new"] == 55


def test_histograms_are_checked_against_their_totals():
    good = {"num-examples": 5, "num-pos": 2, "hist-neg": [1, 2, 0, 0], "hist-pos": [0, 0, 1, 1]}
    assert histogram_problem(good, 4, 100) is None
    cases = {
        "hist-neg has 3 bins, expected 4": {**good, "hist-neg": [1, 2, 0]},
        "not non-negative integers, e.g. -1": {**good, "hist-neg": [4, -1, 0, 0]},
        "not non-negative integers, e.g. 1.5": {**good, "hist-pos": [0, 0, 1.5, 0.5]},
        "histograms count 5 scores but num-examples is 6": {**good, "num-examples": 6},
        "hist-pos counts 2 scores but num-pos is 1": {**good, "num-pos": 1},
        "above screening.max-examples 4": good,
    }
    for expected, metrics in cases.items():
        limit = 4 if "max-examples" in expected else 100
        assert expected in histogram_problem(metrics, 4, limit)


def test_evaluation_replies_with_bad_histograms_are_rejected_by_name(tmp_path, task_identity):
    replies = {1: eval_reply("ok", [3, 1, 0, 0], [0, 0, 1, 2]),
               2: eval_reply("liar", [3, 1, 0, 0], [0, 0, 1, 2], num_examples=1000)}
    accepted, _ = screen_eval(replies)
    guards = _guards(tmp_path)
    guards.settings = FederationSettings(hist_bins=4)
    good, bad = guards.screen_eval(1, accepted)
    assert [r.site for r in good] == ["ok"]
    assert [(r.site, r.reason) for r in bad] == [("liar", "histograms count 7 scores but num-examples is 1000")]


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # the point of the test
def test_a_non_finite_aggregate_is_never_checkpointed(tmp_path):
    """Ten sites at the float32 maximum: FedAvg's float32 weighted sum rounds up to Inf. Without
    screening (norm-factor 0) the round fails with one line instead of checkpointing Inf."""
    s = FederationSettings(screening=ScreeningSettings(norm_factor=0.0))
    guards = Safeguards.open(s, RunDir(tmp_path), resume=False)
    top = {**GLOBAL, "w": np.full((4, 5), np.finfo(np.float32).max, np.float32)}
    reps = [Screened(i, f"s{i}", top, {"num-examples": 5}) for i in range(10)]
    with pytest.raises(MammoError, match=r"round 4: the aggregate of 10 update\(s\) is not a usable model "
                                         r".*'w' has 20 NaN"):
        guards.aggregate(build_strategy(s), 4, GLOBAL, reps)
    # With screening on, one site at the float32 maximum among honest ones is clipped before aggregation.
    guards = Safeguards.open(FederationSettings(), RunDir(tmp_path), resume=False)
    honest = [Screened(i, f"h{i}", site_arrays(1.0, i), {"num-examples": 5}) for i in (1, 2)]
    screened = guards.screen_train(honest + [reps[0]], GLOBAL)
    new = guards.aggregate(build_strategy(guards.settings), 4, GLOBAL, screened.accepted)
    assert [n.site for n in screened.notes] == ["s0"] and update_norm(new, GLOBAL) < 3.0


def test_a_negative_batchnorm_variance_is_refused(tmp_path):
    """x1000 of an update that lowers a variance drives it below 0: refused in the aggregate (no screening),
    and rejected by name when clipping would still leave it negative."""
    lower = {**site_arrays(1.0, 1), "bn.running_var": np.full(3, 0.1, np.float32)}  # variance 1 -> 0.1
    evil = {**lower, "bn.running_var": (1 - 1000 * 0.9 * np.ones(3)).astype(np.float32)}
    reps = [Screened(1, "a", lower, {"num-examples": 5}), Screened(2, "b", lower, {"num-examples": 5}),
            Screened(3, "evil", evil, {"num-examples": 5})]
    off = FederationSettings(screening=ScreeningSettings(norm_factor=0.0))
    with pytest.raises(MammoError, match="not a usable model .*'bn.running_var' has 3 negative"):
        Safeguards.open(off, RunDir(tmp_path), resume=False).aggregate(build_strategy(off), 1, GLOBAL, reps)
    result = screen_norms(reps, GLOBAL, ScreeningSettings(norm_factor=3.0, action="clip"))
    (rejected,) = result.rejected
    assert rejected.site == "evil" and "clipped, it still has a BatchNorm running variance" in rejected.reason


@pytest.mark.parametrize("strategy,extra", [("fedmedian", {}), ("fedtrimmedavg", {"trimmed_beta": 0.34}),
                                            ("krum", {"krum_malicious": 1})])
def test_robust_strategies_ignore_a_scaled_update_fedavg_does_not(strategy, extra):
    honest = [Screened(i, f"h{i}", site_arrays(1.0, i), {"num-examples": 10}) for i in (1, 2)]
    evil = Screened(3, "evil", _scaled(1000.0), {"num-examples": 10})
    robust = aggregate(build_strategy(FederationSettings(strategy=strategy, **extra)), 1, GLOBAL, honest + [evil])
    mean = aggregate(build_strategy(FederationSettings(strategy="fedavg")), 1, GLOBAL, honest + [evil])
    assert update_norm(robust, GLOBAL) < 2.0  # within the honest updates' scale (norm 1 each)
    assert update_norm(mean, GLOBAL) > 300.0


def test_strategy_and_safeguard_settings_are_checked():
    with pytest.raises(ConfigError, match="screening.action"):
        FederationSettings.from_run_config({"screening.action": "ignore"})
    with pytest.raises(ConfigError, match="trimmed-beta"):
        FederationSettings.from_run_config({"strategy": "fedtrimmedavg", "trimmed-beta": 0.5})
    s = FederationSettings.from_run_config({"strategy": "krum", "krum-malicious": 2, "screening": {"norm-max": 5}})
    assert s.krum_malicious == 2 and s.screening.norm_max == 5.0  # a TOML table = Flower's dotted keys


def test_resume_refuses_changed_robust_strategy_parameters(tmp_path):
    s = FederationSettings(strategy="krum", krum_malicious=1)
    Safeguards.open(s, RunDir(tmp_path), resume=False).commit()
    assert Safeguards.open(s, RunDir(tmp_path), resume=True).registry == {}
    with pytest.raises(ConfigError, match="cannot resume with {'krum-malicious': 2}"):
        Safeguards.open(FederationSettings(strategy="krum", krum_malicious=2), RunDir(tmp_path), resume=True)
