"""FedAvgM (server step size and momentum on the averaged update): maths, FedBN keys, resume."""

from __future__ import annotations

import numpy as np
import pytest

from mammo_fl.common.utils.errors import ConfigError
from mammo_fl.server.settings import FederationSettings
from mammo_fl.server.strategy import aggregate, build_strategy, load_strategy_state, save_strategy_state
from mammo_fl.server.validate import Screened


def _replies(value: float) -> list[Screened]:
    return [Screened(i, f"site_{i}", {"w": np.full(3, value, np.float32)}, {"num-examples": 2}) for i in range(2)]


def test_fedavgm_steps_and_accumulates_momentum():
    s = FederationSettings(strategy="fedavgm", min_sites=2, server_lr=2.0, server_momentum=0.5)
    strat = build_strategy(s)
    glob = {"w": np.zeros(3, np.float32), "bn.running_mean": np.ones(3, np.float32)}
    r1 = aggregate(strat, 1, glob, _replies(1.0))  # mean update +1 -> w = 0 + 2 * 1
    np.testing.assert_allclose(r1["w"], 2.0)
    np.testing.assert_array_equal(r1["bn.running_mean"], 1.0)  # not sent (FedBN): kept, not stepped
    r2 = aggregate(strat, 2, r1, _replies(3.0))  # update +1 again; buffer 0.5 * 1 + 1 = 1.5 -> w = 2 + 3
    np.testing.assert_allclose(r2["w"], 5.0)
    assert r2["w"].dtype == np.float32


def test_fedavgm_with_unit_step_and_no_momentum_is_fedavg():
    glob = {"w": np.zeros(3, np.float32)}
    plain = aggregate(build_strategy(FederationSettings(strategy="fedavg", min_sites=2)), 1, glob, _replies(1.5))
    avgm = aggregate(build_strategy(FederationSettings(strategy="fedavgm", min_sites=2)), 1, glob, _replies(1.5))
    np.testing.assert_array_equal(plain["w"], avgm["w"])


def test_fedavgm_momentum_survives_save_and_load(tmp_path):
    s = FederationSettings(strategy="fedavgm", min_sites=2, server_momentum=0.9)
    strat = build_strategy(s)
    r1 = aggregate(strat, 1, {"w": np.zeros(3, np.float32)}, _replies(1.0))
    save_strategy_state(strat, tmp_path / "s.npz")
    fresh = build_strategy(s)
    assert load_strategy_state(fresh, tmp_path / "s.npz") == 1
    a = aggregate(strat, 2, r1, _replies(2.0))
    b = aggregate(fresh, 2, r1, _replies(2.0))
    np.testing.assert_allclose(a["w"], b["w"])
    np.testing.assert_allclose(a["w"], 1.0 + 0.9 * 1.0 + 1.0)  # the restored buffer was used


@pytest.mark.parametrize("values", [{"server-lr": 0.0}, {"server-momentum": 1.0}, {"server-momentum": -0.1}])
def test_bad_server_step_is_a_config_error(values):
    with pytest.raises(ConfigError, match="server-lr"):
        FederationSettings.from_run_config({"strategy": "fedavgm", **values})


@pytest.mark.parametrize("strategy", ["fedavgm", "fedadam"])
def test_batchnorm_statistics_are_averaged_not_stepped(strategy):
    """A server step on running_var would extrapolate it (to a negative variance with a large step)."""
    s = FederationSettings(strategy=strategy, min_sites=2, server_lr=3.0, server_momentum=0.9, eta=0.5)
    strat = build_strategy(s)
    glob = {"w": np.zeros(3, np.float32), "bn.running_var": np.full(3, 1.0, np.float32),
            "bn.num_batches_tracked": np.array(10, np.int64)}
    replies = [Screened(i, f"site_{i}", {"w": np.full(3, 0.5, np.float32), "bn.running_var": np.full(3, v, np.float32),
                                          "bn.num_batches_tracked": np.array(12, np.int64)}, {"num-examples": n})
               for i, (v, n) in enumerate([(0.2, 1), (0.5, 3)])]
    new = aggregate(strat, 1, glob, replies)
    np.testing.assert_allclose(new["bn.running_var"], (0.2 * 1 + 0.5 * 3) / 4, rtol=1e-6)  # weighted mean
    assert new["bn.running_var"].dtype == np.float32 and int(new["bn.num_batches_tracked"]) == 12
    assert not np.allclose(new["w"], 0.5)  # the learnable weight did get the server step
