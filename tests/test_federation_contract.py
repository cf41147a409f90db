"""One federation contract: the fine-tuning hyperparameters travel under one set of keys."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from mammo_fl.common.federation.round_config import FINETUNE_KEYS, RoundConfig, finetune_from_keys
from mammo_fl.common.federation.strategies import STRATEGIES
from mammo_fl.common.training.finetune_config import FineTuneConfig
from mammo_fl.common.utils.config import load_config
from mammo_fl.common.utils.errors import ConfigError
from mammo_fl.server.settings import FederationSettings
from mammo_fl.simulations.runners.centralised import finetune_config
from mammo_fl.simulations.runners.federated import federation_run_config
from mammo_fl.simulations.settings import parse_settings

APP_CONFIG = Path(__file__).resolve().parents[1] / "server" / "flower_app" / "pyproject.toml"


def test_round_config_survives_the_wire():
    ft = FineTuneConfig(epochs=3, lr=2e-4, weight_decay=0.0, batch_size=8, max_steps=5, augment=False, seed=7,
                        proximal_mu=0.05, keep_bn_statistics=True, warmup_steps=3)
    sent = RoundConfig(server_round=4, fed_id="abc123", model_kind="whole_image", model_spec={"arch": "x"},
                       preprocessing={"height": 8, "width": 6, "mean": 1.5}, finetune=ft, val_fraction=0.3,
                       fedbn=True, device="cpu", num_threads=2, tta=True, hist_bins=200)
    assert RoundConfig.from_record(dict(sent.to_record())) == sent


def test_a_site_fills_absent_keys_with_the_one_set_of_defaults():
    got = RoundConfig.from_record({"server-round": 2})
    assert got.finetune == FineTuneConfig() and got.server_round == 2
    with pytest.raises(ConfigError):
        RoundConfig.from_record({"lr": "fast"})


def test_every_finetune_key_is_declared_by_the_flower_app():
    from mammo_fl.server.safeguard_settings import flatten_config

    declared = flatten_config(tomllib.loads(APP_CONFIG.read_text())["tool"]["flwr"]["app"]["config"])
    assert set(FINETUNE_KEYS) <= set(declared)
    assert set(FederationSettings().to_run_config()) == set(declared)


def test_simulation_and_server_read_the_same_hyperparameters():
    settings = parse_settings(load_config("quick", "sim", ["finetune.strategy='fedprox'", "finetune.fedbn=true"]))
    run_config = federation_run_config(settings.finetune, 3, 5, Path("s"), Path("o"), Path("m.pt"), "cpu", 1)
    server = FederationSettings.from_run_config(run_config)
    assert server.finetune == dataclasses.replace(settings.finetune.local, seed=5)
    assert server.strategy == "fedprox" and server.fedbn
    assert server.site_finetune().proximal_mu == settings.finetune.local.proximal_mu
    single = finetune_config(settings.finetune, seed=5)  # equal compute: rounds x local epochs
    assert single.epochs == settings.finetune.rounds * settings.finetune.local.epochs and single.proximal_mu == 0


def test_lr_schedule_across_rounds_reaches_the_sites_round_by_round():
    settings = parse_settings(load_config("quick", "sim", ["finetune.lr_decay=0.5", "finetune.warmup_steps=4"]))
    run_config = federation_run_config(settings.finetune, 3, 0, Path("s"), Path("o"), Path("m.pt"), "cpu", 1)
    server = FederationSettings.from_run_config(run_config)
    lr = settings.finetune.local.lr
    sent = [RoundConfig.from_record(RoundConfig(server_round=r, fed_id="f", model_kind="whole_image", model_spec={},
                                                preprocessing={}, finetune=server.site_finetune(r)).to_record())
            for r in (1, 2, 3)]
    assert [c.finetune.lr for c in sent] == pytest.approx([lr, lr / 2, lr / 4])
    assert [c.finetune.warmup_steps for c in sent] == [4, 0, 0]  # the federation warms up once
    single = finetune_config(settings.finetune, seed=0)  # pooled / single-site: constant lr, one warm-up
    assert single.lr == lr and single.warmup_steps == 4
    for bad in (0.0, 1.5):
        with pytest.raises(ConfigError, match="lr-decay"):
            FederationSettings.from_run_config({"lr-decay": bad})
        with pytest.raises(ConfigError, match="lr_decay"):
            parse_settings(load_config("quick", "sim", [f"finetune.lr_decay={bad}"]))


def test_one_strategy_table_for_server_and_simulation():
    for name in STRATEGIES:
        assert FederationSettings.from_run_config({"strategy": name}).strategy == name
        parse_settings(load_config("quick", "sim", [f"finetune.strategy='{name}'"]))
    with pytest.raises(ConfigError, match="unknown"):
        FederationSettings.from_run_config({"strategy": "scaffold"})


def test_fedprox_mu_only_reaches_sites_under_fedprox():
    s = FederationSettings.from_run_config({"strategy": "fedavg", "proximal-mu": 0.5})
    assert s.site_finetune().proximal_mu == 0.0
    assert finetune_from_keys({"max-steps": 0}).max_steps is None
