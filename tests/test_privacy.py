"""Differential privacy: the sites' clipping/noise (client/site_privacy.py), Flower's DP wrapper at the
coordinator (server/privacy.py), the dp-accounting ledger and its resume, and the dp.* settings."""

from __future__ import annotations

import argparse
import math

import numpy as np
import pytest
from safeguard_support import GLOBAL, site_arrays

from mammo_fl.client.site_privacy import clip_update, noise_histograms, pack_within_norm, protect_update
from mammo_fl.common.federation import wire as W
from mammo_fl.common.federation.round_config import RoundConfig
from mammo_fl.common.utils.errors import ConfigError, MammoError
from mammo_fl.server.privacy import HISTOGRAM, UPDATE, PrivacyLedger
from mammo_fl.server.rundir import RunDir
from mammo_fl.server.safeguard_settings import PrivacySettings
from mammo_fl.server.safeguards import Safeguards
from mammo_fl.server.screening import update_norm
from mammo_fl.server.settings import FederationSettings
from mammo_fl.server.strategy import aggregate, build_strategy
from mammo_fl.server.validate import Screened


def test_ledger_epsilon_is_dp_accountings_rdp_and_survives_a_reload(tmp_path):
    from dp_accounting import dp_event
    from dp_accounting.rdp import RdpAccountant

    ledger = PrivacyLedger()
    assert ledger.epsilon(UPDATE, 1e-5) is None
    for rnd in (1, 2, 3):
        ledger.record(rnd, UPDATE, 1.0, sites=3)
    ledger.record(0, HISTOGRAM, 20.0, sites=3)
    reference = RdpAccountant()
    reference.compose(dp_event.GaussianDpEvent(1.0), 3)
    assert ledger.epsilon(UPDATE, 1e-5) == pytest.approx(reference.get_epsilon(1e-5)) == pytest.approx(9.01, abs=0.01)
    assert ledger.epsilon(HISTOGRAM, 1e-5) < ledger.epsilon(UPDATE, 1e-5)
    ledger.save(tmp_path / "ledger.json")
    again = PrivacyLedger.load(tmp_path / "ledger.json")
    assert again.releases == ledger.releases and again.epsilon(UPDATE, 1e-5) == ledger.epsilon(UPDATE, 1e-5)
    (tmp_path / "ledger.json").write_text("{broken")
    with pytest.raises(MammoError, match="unreadable privacy ledger"):
        PrivacyLedger.load(tmp_path / "ledger.json")


def _dp_settings(**dp) -> FederationSettings:
    return FederationSettings(dp=PrivacySettings(**dp))


def test_central_dp_noise_is_calibrated_and_the_ledger_is_restored_on_resume(tmp_path):
    big = {"w": np.zeros(200_000, np.float32)}
    reps = [Screened(i, f"s{i}", {"w": np.full(200_000, 0.001 * i, np.float32)}, {"num-examples": n})
            for i, n in ((1, 1), (2, 10), (3, 100))]
    s = _dp_settings(noise_multiplier=0.9, clip_norm=3.0, delta=1e-6)
    guards = Safeguards.open(s, RunDir(tmp_path), resume=False)
    new = guards.aggregate(build_strategy(s), 1, big, reps)
    noise = new["w"] - 0.002  # uniform mean of 0.001, 0.002, 0.003 (num-examples ignored under DP)
    assert float(noise.mean()) == pytest.approx(0.0, abs=0.01)
    assert float(noise.std()) == pytest.approx(0.9 * 3.0 / 3, rel=0.01)  # Flower's wrapper: nm x C / sites
    eps1 = guards.privacy_fields()["epsilon"]
    assert guards.privacy_fields()["dp_delta"] == 1e-6 and math.isfinite(eps1)

    resumed = Safeguards.open(s, RunDir(tmp_path), resume=True)
    assert resumed.privacy_fields()["epsilon"] == eps1 and resumed.restored()["privacy_releases"] == 1
    resumed.aggregate(build_strategy(s), 2, big, reps)
    two = PrivacyLedger()
    two.record(1, UPDATE, 0.9, 3)
    two.record(2, UPDATE, 0.9, 3)
    eps2 = resumed.privacy_fields()["epsilon"]
    assert eps2 == pytest.approx(two.epsilon(UPDATE, 1e-6)) and eps2 > eps1
    fresh = Safeguards.open(s, RunDir(tmp_path), resume=False)  # a new run starts a new ledger
    assert fresh.ledger.releases == [] and not (tmp_path / "privacy_ledger.json").exists()


def test_site_noise_leaves_the_mean_alone_and_counts_half_the_multiplier(tmp_path):
    reps = [Screened(i, f"s{i}", site_arrays(1.0, i), {"num-examples": 10}) for i in (1, 2)]
    s = _dp_settings(noise_multiplier=2.0, noise_at="site")
    guards = Safeguards.open(s, RunDir(tmp_path), resume=False)
    new = guards.aggregate(build_strategy(s), 1, GLOBAL, reps)
    plain = aggregate(build_strategy(s), 1, GLOBAL, reps)
    np.testing.assert_array_equal(new["w"], plain["w"])
    assert guards.ledger.releases[0].noise_multiplier == 1.0  # replace-one: sensitivity 2 x clip-norm


def test_noise_cannot_leave_a_negative_batchnorm_variance(tmp_path):
    s = _dp_settings(noise_multiplier=50.0, clip_norm=1.0)
    guards = Safeguards.open(s, RunDir(tmp_path), resume=False)
    reps = [Screened(i, f"s{i}", site_arrays(0.5, i), {"num-examples": 10}) for i in (1, 2)]
    new = guards.aggregate(build_strategy(s), 1, GLOBAL, reps)
    assert (new["bn.running_var"] >= 0).all() and int(new["bn.num_batches_tracked"]) == 9


def test_central_noise_reaches_the_batchnorm_statistics(tmp_path):
    """They are part of the clipped update, so the DP wrapper must aggregate (and noise) them too."""
    s = _dp_settings(noise_multiplier=1.0, clip_norm=1.0)
    guards = Safeguards.open(s, RunDir(tmp_path), resume=False)
    reps = [Screened(i, f"s{i}", site_arrays(0.5, i), {"num-examples": 10}) for i in (1, 2)]
    new = guards.aggregate(build_strategy(s), 1, GLOBAL, reps)
    plain = aggregate(build_strategy(FederationSettings()), 1, GLOBAL, reps)
    assert not np.allclose(new["bn.running_var"], plain["bn.running_var"], atol=1e-3)


def test_sites_clip_their_update_and_noise_when_asked():
    sent = site_arrays(5.0, 1)
    clipped = clip_update(sent, GLOBAL, 1.0)
    assert update_norm(clipped, GLOBAL) == pytest.approx(1.0, rel=1e-5)
    small = site_arrays(0.5, 1)  # whole-update norm 0.5 x sqrt(2) < 1: unchanged
    assert update_norm(clip_update(small, GLOBAL, 1.0), GLOBAL) == pytest.approx(update_norm(small, GLOBAL), rel=1e-6)
    assert int(clipped["bn.num_batches_tracked"]) == 9 and clipped["w"].dtype == np.float32
    rc = RoundConfig(1, "f", "whole_image", {}, {}, dp_clip_norm=1.0, dp_site_noise=0.0)
    assert update_norm(protect_update(sent, GLOBAL, rc), GLOBAL) == pytest.approx(1.0, rel=1e-5)
    big = {"w": np.zeros(100_000, np.float32)}
    noisy = protect_update({"w": np.ones(100_000, np.float32)}, big,
                           RoundConfig(1, "f", "whole_image", {}, {}, dp_clip_norm=2.0, dp_site_noise=0.5))
    assert float((noisy["w"] - 2.0 / math.sqrt(100_000)).std()) == pytest.approx(1.0, rel=0.02)  # 0.5 x 2
    off = RoundConfig(1, "f", "whole_image", {}, {})
    assert protect_update(sent, GLOBAL, off) is sent


@pytest.mark.parametrize("dtype", ["fp16", "bf16", "int8"])
def test_the_clip_holds_on_the_update_the_coordinator_decodes(dtype):
    """Rounding to the wire dtype can lengthen a clipped update (int8 always does: its rounding error
    adds ~scale^2 / 12 per element to the squared norm); the site shrinks it until the decoded norm fits."""
    rng = np.random.default_rng(7)
    held = {"w": rng.normal(0, 0.05, 20_000).astype(np.float32), "b": rng.normal(0, 0.05, 300).astype(np.float32),
            "n": np.array(3, np.int64)}
    sent = {"w": held["w"] + rng.normal(0, 1e-3, 20_000).astype(np.float32),
            "b": held["b"] + rng.standard_t(2, 300).astype(np.float32) * 1e-3, "n": np.array(4, np.int64)}
    clip = 0.5 * update_norm(sent, held)
    clipped = clip_update(sent, held, clip)
    layout = W.Layout.of(held)

    def decoded_norm(packed: W.Packed) -> float:
        return update_norm(W.unpack(packed, layout, held), held)

    if dtype == "int8":
        assert decoded_norm(W.pack_delta(clipped, held, layout, dtype)) > clip  # without the re-check: above
    packed = pack_within_norm(clipped, held, layout, dtype, clip)
    assert packed.dtype == dtype and 0.99 * clip < decoded_norm(packed) <= clip


def test_noised_histograms_stay_counts():
    neg, pos = np.array([5, 0, 0, 3]), np.array([0, 1, 0, 2])
    n2, p2 = noise_histograms(neg, pos, 2.0, np.random.default_rng(0))
    assert n2.dtype == np.int64 and (n2 >= 0).all() and (p2 >= 0).all() and not np.array_equal(n2, neg)
    assert noise_histograms(neg, pos, 0.0) == (neg, pos)


def test_dp_settings_and_what_the_sites_are_asked():
    with pytest.raises(ConfigError, match="dp.noise-at=server needs strategy fedavg or fedprox"):
        FederationSettings.from_run_config({"strategy": "krum", "dp.noise-multiplier": 1.0})
    assert FederationSettings.from_run_config({"strategy": "krum", "dp.noise-multiplier": 1.0,
                                               "dp.noise-at": "site"}).dp.enabled
    with pytest.raises(ConfigError, match="dp.clip-norm"):
        FederationSettings.from_run_config({"dp.clip-norm": 0})
    assert PrivacySettings().round_fields() == {"dp_clip_norm": 0.0, "dp_site_noise": 0.0, "dp_histogram_noise": 0.0}
    site = PrivacySettings(noise_multiplier=0.5, clip_norm=2.0, noise_at="site").round_fields()
    assert site == {"dp_clip_norm": 2.0, "dp_site_noise": 0.5, "dp_histogram_noise": 0.0}
    rc = RoundConfig(1, "f", "whole_image", {}, {}, **site)
    assert RoundConfig.from_record(dict(rc.to_record())) == rc


def test_mammo_server_set_accepts_the_dotted_dp_keys(tmp_path):
    from mammo_fl.server.run_config import load_run_config, write_run_config

    cfg = tmp_path / "more.toml"
    cfg.write_text("[dp]\nclip-norm = 4.0\n")
    args = argparse.Namespace(config=cfg, overrides=["dp.noise-multiplier=1.0", "screening.action=reject"],
                              model=tmp_path / "m.pt", resume=False, rounds=None, min_sites=None)
    config = load_run_config(args, tmp_path)
    assert config["dp"] == {**config["dp"], "noise-multiplier": 1.0, "clip-norm": 4.0}
    assert config["dp"]["noise-at"] == "server"  # a partial [dp] table keeps the other keys
    s = FederationSettings.from_run_config(config)
    assert (s.dp.noise_multiplier, s.dp.clip_norm, s.screening.action) == (1.0, 4.0, "reject")
    write_run_config(config, tmp_path / "run.toml")
    from flwr.common.config import parse_config_args

    flat = parse_config_args([str(tmp_path / "run.toml")])  # what `flwr run --run-config FILE` sends
    assert flat["dp.noise-multiplier"] == 1.0 and FederationSettings.from_run_config(flat) == s
    bad = argparse.Namespace(**{**vars(args), "overrides": ["dp.noise=1"]})
    with pytest.raises(ConfigError, match="unknown config key 'dp.noise'"):
        load_run_config(bad, tmp_path)
