"""The federation contract for one round: what the coordinator asks a site to do.

The fine-tuning hyperparameters are those of `FineTuneConfig` (defined once, in
common/training/finetune.py); this module only names them on the wire. The same key names are
the run-config keys of the Flower app (server/flower_app/pyproject.toml), `mammo-server --set`
and the ConfigRecord a site receives, so server, client and simulations share one definition.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mammo_fl.common.federation import protocol as P
from mammo_fl.common.federation.wire import check_wire_dtype
from mammo_fl.common.training.finetune_config import FineTuneConfig
from mammo_fl.common.utils.errors import ConfigError

# wire key -> FineTuneConfig field. Site-local fields (num_workers, class_balance, preload_max_mb)
# never travel: they are the site's business.
FINETUNE_KEYS: dict[str, str] = {
    "local-epochs": "epochs",
    "lr": "lr",
    "weight-decay": "weight_decay",
    "batch-size": "batch_size",
    "max-steps": "max_steps",  # 0 on the wire = whole epochs (None in FineTuneConfig)
    "augment": "augment",
    "seed": "seed",
    "proximal-mu": "proximal_mu",
    "keep-bn-statistics": "keep_bn_statistics",
    "warmup-steps": "warmup_steps",
    "local-optimizer-state": "local_optimizer_state",
}
_FT_DEFAULTS = FineTuneConfig()
# `fed-id` names files at the site (its FedBN and optimiser state): letters, digits, '_' and '-' only.
FED_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def coerce_value(key: str, value: Any, default: Any) -> Any:
    """A TOML / ConfigRecord scalar as the type of `default`, or a one-line ConfigError."""
    try:
        if isinstance(default, bool):
            if isinstance(value, str):
                return value.strip().lower() in ("1", "true", "yes", "on")
            return bool(value)
        if isinstance(default, int):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if isinstance(default, float):
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"config {key}={value!r}: expected {type(default).__name__}") from None


def finetune_to_keys(cfg: FineTuneConfig) -> dict[str, Any]:
    """The wire form of the fine-tuning hyperparameters."""
    out = {key: getattr(cfg, name) for key, name in FINETUNE_KEYS.items()}
    out["max-steps"] = int(cfg.max_steps or 0)
    return out


def finetune_from_keys(values: Mapping[str, Any], base: FineTuneConfig = _FT_DEFAULTS) -> FineTuneConfig:
    """FineTuneConfig from wire keys; absent keys keep `base`'s values."""
    changes: dict[str, Any] = {}
    for key, name in FINETUNE_KEYS.items():
        if key not in values:
            continue
        default = 0 if name == "max_steps" else getattr(_FT_DEFAULTS, name)
        changes[name] = coerce_value(key, values[key], default)
    if "max_steps" in changes:
        changes["max_steps"] = changes["max_steps"] or None
    cfg = dataclasses.replace(base, **changes)
    cfg.validate()
    return cfg


@dataclass(frozen=True)
class RoundConfig:
    """One round's request to a site (a Flower ConfigRecord on the wire)."""

    server_round: int
    fed_id: str
    model_kind: str
    model_spec: dict[str, Any]
    preprocessing: dict[str, Any]
    finetune: FineTuneConfig = field(default_factory=FineTuneConfig)
    val_fraction: float = 0.2
    fedbn: bool = False
    device: str = "auto"
    num_threads: int = 0
    tta: bool = False
    hist_bins: int = 1000
    evaluate: bool = False  # score the received model on the validation split before training (fused round)
    train_layers: str = "all"  # all | top | head: what the site fine-tunes (and sends back)
    wire_dtype: str = "fp16"  # fp32 | fp16 | bf16 | int8: how the site's update travels (common/federation/wire.py)
    registered_site: str = ""  # the name the receiving node's key is registered under ("" in lab mode)
    # differential privacy asked of the site (0 = off): clip the update to this L2 norm, add Gaussian noise
    # of std dp_site_noise x dp_clip_norm to it, add Gaussian noise of this std (counts) to each histogram bin
    dp_clip_norm: float = 0.0
    dp_site_noise: float = 0.0
    dp_histogram_noise: float = 0.0

    # scalar fields sent under their dashed names
    _SCALARS = ("server_round", "fed_id", "model_kind", "val_fraction", "fedbn", "device", "num_threads", "tta",
                "hist_bins", "evaluate", "train_layers", "wire_dtype", "registered_site", "dp_clip_norm",
                "dp_site_noise", "dp_histogram_noise")

    def to_record(self) -> Any:
        from flwr.app import ConfigRecord

        values: dict[str, Any] = {name.replace("_", "-"): getattr(self, name) for name in self._SCALARS}
        values["model-spec"] = P.dumps(self.model_spec)
        values["preprocessing"] = P.dumps(self.preprocessing)
        values.update(finetune_to_keys(self.finetune))
        return ConfigRecord(values)

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> RoundConfig:
        """Parse what the server sent; absent keys take the defaults of this class and FineTuneConfig."""
        defaults = cls(server_round=0, fed_id="default", model_kind="whole_image", model_spec={}, preprocessing={})
        values: dict[str, Any] = {}
        for name in cls._SCALARS:
            key = name.replace("_", "-")
            if key in record:
                values[name] = coerce_value(key, record[key], getattr(defaults, name))
        try:
            values["model_spec"] = P.loads(str(record.get("model-spec", "{}")))
            values["preprocessing"] = P.loads(str(record.get("preprocessing", "{}")))
        except ValueError:
            raise ConfigError("round config: model-spec / preprocessing are not JSON") from None
        values["finetune"] = finetune_from_keys(record)
        if not FED_ID.match(str(values.get("fed_id", defaults.fed_id))):
            raise ConfigError("round config: fed-id must be 1-64 letters, digits, '_' or '-'")
        out = dataclasses.replace(defaults, **values)
        check_train_layers(out.train_layers)
        check_wire_dtype(out.wire_dtype)
        return out


def check_train_layers(name: str) -> str:
    if name not in P.TRAIN_LAYERS:
        raise ConfigError(f"train-layers {name!r} unknown; choose one of {', '.join(P.TRAIN_LAYERS)}")
    return name
