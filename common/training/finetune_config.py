"""The fine-tuning hyperparameters: the one definition used by sites, pooled runs and simulations.

Kept free of torch so that command-line tools and the federation contract
(common/federation/round_config.py) can import it cheaply.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from mammo_fl.common.utils.errors import ConfigError


@dataclass
class FineTuneConfig:
    epochs: int = 1
    lr: float = 1e-5
    weight_decay: float = 0.01
    batch_size: int = 2
    proximal_mu: float = 0.0
    augment: bool = True
    num_workers: int = 0
    seed: int = 0
    max_steps: int | None = None
    class_balance: bool = True
    # BatchNorm layers keep the source model's running statistics (eval mode; their affine weights
    # still train): this pipeline's models carry the patch classifier's statistics, which batches of
    # a few whole images overwrite (docs/simulations.md, "BatchNorm statistics during fine-tuning")
    keep_bn_statistics: bool = False
    # linear learning-rate warm-up over the first steps of this call (a fresh Adam's first steps move every
    # weight by ~lr whatever its gradient); a federation sends it in round 1 only; 0 = none. Measured: it
    # helped pooled runs, not federated ones (docs/simulations.md, "Federated vs pooled at equal compute")
    warmup_steps: int = 0
    # a federated site keeps its Adam moments and step count across rounds (in its state dir, never sent)
    # instead of a fresh Adam every round. Measured: it made small simulated sites worse (-0.07 AUC at 20
    # patients; docs/simulations.md, "Federated vs pooled at equal compute"), so presets keep it off
    local_optimizer_state: bool = False
    preload_max_mb: float = 1024.0  # datasets smaller than this are held in RAM

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> FineTuneConfig:
        values = dict(values or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown fine-tuning setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        cfg = cls(**values)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if self.epochs < 0 or self.batch_size < 1:
            raise ConfigError("fine-tuning needs epochs >= 0 and batch_size >= 1 "
                              f"(got {self.epochs}, {self.batch_size})")
        if not (self.lr > 0 and self.weight_decay >= 0 and self.proximal_mu >= 0 and self.warmup_steps >= 0):
            raise ConfigError("fine-tuning needs lr > 0, weight_decay >= 0, proximal_mu >= 0, warmup_steps >= 0")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
