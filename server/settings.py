"""Federation settings: one typed object built from Flower's run config (every key has a default).

The same keys appear in common/presets/federation.toml (what `mammo-server` sends) and in
server/flower_app/pyproject.toml [tool.flwr.app.config] (what `flwr run` accepts); a test keeps
the three in step. Simulation passes an empty run config, hence the defaults here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any

from mammo_fl.common.evaluation.operating_point import Target, target_from_settings
from mammo_fl.common.federation.round_config import (
    check_train_layers,
    coerce_value,
    finetune_from_keys,
    finetune_to_keys,
)
from mammo_fl.common.federation.wire import check_wire_dtype
from mammo_fl.common.federation.strategies import check_strategy
from mammo_fl.common.training.finetune_config import FineTuneConfig
from mammo_fl.common.utils.errors import ConfigError
from mammo_fl.server.safeguard_settings import (
    SECTIONS,
    PrivacySettings,
    ScreeningSettings,
    flatten_config,
    section_from_run_config,
    section_to_run_config,
)


@dataclass(frozen=True)
class FederationSettings:
    out_dir: str = ""
    initial_model: str = ""
    num_server_rounds: int = 3
    min_sites: int = 2
    start_sites: int = 0  # sites to wait for before round 1 (0 = min-sites); after site-wait-timeout min-sites do
    strategy: str = "fedavg"
    fedbn: bool = False
    train_layers: str = "all"  # all | top | head: what the sites fine-tune (frozen layers never travel)
    wire_dtype: str = "fp16"  # fp32 | fp16 | bf16 | int8: deltas on the wire (common/federation/wire.py)
    # local fine-tuning hyperparameters (run-config keys: common/federation/round_config.FINETUNE_KEYS);
    # `proximal-mu` is sent to the sites only with strategy fedprox
    finetune: FineTuneConfig = field(default_factory=lambda: FineTuneConfig(proximal_mu=0.01))
    # learning-rate schedule across rounds: round r's sites train at lr x lr_decay^(r-1) (1 = constant)
    lr_decay: float = 1.0
    val_fraction: float = 0.2
    device: str = "auto"
    num_threads: int = 0  # 0 = torch default
    tta: bool = False
    # server-side step (fedavgm): new = w - server_lr * (momentum buffer of w - mean(w_sites))
    server_lr: float = 1.0
    server_momentum: float = 0.0
    # server-side optimiser (fedadam / fedyogi)
    eta: float = 1e-4
    eta_l: float = 1e-5
    beta_1: float = 0.9
    beta_2: float = 0.99
    tau: float = 1e-9
    # robust strategies (fedtrimmedavg: share cut from each tail; krum: assumed malicious sites)
    trimmed_beta: float = 0.2
    krum_malicious: int = 1
    # robustness
    round_timeout: float = 3600.0
    site_wait_timeout: float = 600.0
    round_retries: int = 2
    # evaluation
    hist_bins: int = 1000
    threshold: float = 0.5  # fixed threshold, used only when both operating-point targets are 0
    # operating point chosen each round on the pooled histograms (common/evaluation/operating_point.py):
    # a sensitivity target (> 0) wins over the specificity target
    operating_point_specificity: float = 0.9
    operating_point_sensitivity: float = 0.0
    evaluate_initial: bool = True
    resume: bool = False
    launch_id: str = ""  # set by mammo-server: tags events/status so a stale ServerApp is ignored
    # simulation: site folders are the sorted subfolders of sites-dir
    sites_dir: str = ""
    # deployment with registered sites: node id -> site name file (set by mammo-server; "" = lab mode)
    site_nodes: str = ""
    # test-only, simulation only: "SITE=FAULT[;SITE=FAULT]" (client/faults.py); deployed sites choose their own
    test_faults: str = ""
    # safeguards: `screening.*` and `dp.*` run-config keys (server/safeguard_settings.py)
    screening: ScreeningSettings = field(default_factory=ScreeningSettings)
    dp: PrivacySettings = field(default_factory=PrivacySettings)

    @staticmethod
    def key_of(field_name: str) -> str:
        return field_name.replace("_", "-")

    @classmethod
    def from_run_config(cls, run_config: dict[str, Any]) -> FederationSettings:
        """Typed settings from a Flower run config; unknown keys are ignored (other apps' keys)."""
        run_config = flatten_config(run_config)  # a TOML file's [dp] table = Flower's dp.* keys
        values: dict[str, Any] = {}
        for f in fields(cls):
            key = cls.key_of(f.name)
            if f.name == "finetune" or f.name in SECTIONS or key not in run_config:
                continue
            values[f.name] = coerce_value(key, run_config[key], f.default)
        values["finetune"] = finetune_from_keys(run_config, cls().finetune)
        for name, (prefix, section) in SECTIONS.items():
            values[name] = section_from_run_config(section, prefix, run_config)
        settings = cls(**values)
        settings.check()
        return settings

    def to_run_config(self) -> dict[str, Any]:
        out = {self.key_of(f.name): getattr(self, f.name) for f in fields(self)
               if f.name != "finetune" and f.name not in SECTIONS}
        out.update(finetune_to_keys(self.finetune))
        for name, (prefix, _) in SECTIONS.items():
            out.update(section_to_run_config(getattr(self, name), prefix))
        return out

    def site_finetune(self, server_round: int = 1) -> FineTuneConfig:
        """What the sites train with in `server_round` (1-based): the round's lr on the schedule, the lr
        warm-up in round 1 only (the federation warms up once, as a pooled run does at its start; warming
        up every round slows every round: docs/simulations.md), FedProx's mu only with strategy fedprox."""
        mu = self.finetune.proximal_mu if self.strategy == "fedprox" else 0.0
        lr = self.finetune.lr * self.lr_decay ** max(server_round - 1, 0)
        warmup = self.finetune.warmup_steps if server_round <= 1 else 0
        return dataclasses.replace(self.finetune, proximal_mu=mu, lr=lr, warmup_steps=warmup)

    def operating_target(self) -> Target:
        return target_from_settings(self.operating_point_specificity, self.operating_point_sensitivity,
                                    self.threshold)

    def check(self) -> None:
        self.operating_target()  # targets and threshold in [0, 1]
        check_strategy(self.strategy)
        check_train_layers(self.train_layers)
        check_wire_dtype(self.wire_dtype)
        if self.num_server_rounds < 1:
            raise ConfigError("num-server-rounds must be >= 1")
        if self.min_sites < 1:
            raise ConfigError("min-sites must be >= 1")
        if self.hist_bins < 10:
            raise ConfigError("hist-bins must be >= 10")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError("val-fraction must be in (0, 1)")
        if not 0.0 < self.lr_decay <= 1.0:
            raise ConfigError("lr-decay must be in (0, 1] (1 = the same lr every round)")
        if self.server_lr <= 0 or not 0.0 <= self.server_momentum < 1.0:
            raise ConfigError("server-lr must be > 0 and server-momentum in [0, 1)")
        if self.round_timeout <= 0 or self.site_wait_timeout <= 0:
            raise ConfigError("round-timeout and site-wait-timeout must be > 0 (Flower would wait forever)")
        if not 0.0 <= self.trimmed_beta < 0.5 or self.krum_malicious < 0:
            raise ConfigError("trimmed-beta must be in [0, 0.5) and krum-malicious >= 0")
        self.screening.check()
        self.dp.check(self.strategy)

