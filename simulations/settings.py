"""Typed view of a `sim_*.toml` preset (after `--set` overrides), validated up front.

A typo or an impossible value must fail before minutes of data generation, with a
one-line ConfigError.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from mammo_fl.common.federation.round_config import FINETUNE_KEYS
from mammo_fl.common.federation.strategies import check_strategy
from mammo_fl.common.training.finetune_config import FineTuneConfig
from mammo_fl.common.utils.errors import ConfigError
from mammo_fl.simulations.partition import SCHEMES
from mammo_fl.simulations.results import METHODS


@dataclass(frozen=True)
class ExperimentSettings:
    sizes: list[int]
    k_sites: list[int]
    seeds: list[int]
    methods: list[str]
    partition: str = "iid"
    label_alpha: float = 0.5
    device: str = "auto"
    torch_threads: int = 2
    tta: bool = False
    eval_batch_size: int = 8


@dataclass(frozen=True)
class TargetSettings:
    require_data: bool = False  # refuse the synthetic default (paper preset)
    patients: int = 115  # synthetic INbreast-like default: the paper's 115 patients
    seed: int = 2019
    split_seed: int = 0  # the 70/30 split (and so the validation set) is fixed for a run
    image_height: int = 0  # synthetic DICOM size; 0 = the generator's default
    image_width: int = 0
    domain: str = "ffdm"  # synthetic acquisition domain (the source model is trained on "film")
    conspicuity: float = 1.0  # synthetic lesion contrast multiplier (common.synth; 1 = the generator's default)
    lesion_scale: float = 1.0  # synthetic lesion size multiplier
    # synthetic: each patient imaged by one of these vendor profiles (label-balanced); [] = one scanner, or,
    # with experiment.partition = "vendor", the first max(k_sites) FFDM profiles (see target_vendors)
    vendors: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class SourceSettings:
    require_model: bool = False  # refuse to build a source model (paper preset)
    train_preset: str = "cpu"
    overrides: list[str] = field(default_factory=list)
    patients: int = 0  # synthetic DDSM-like patients; 0 = generator default
    seed: int = 0
    image_height: int = 0
    image_width: int = 0
    conspicuity: float = 1.0
    lesion_scale: float = 1.0


@dataclass(frozen=True)
class FineTuneSettings:
    """[finetune]: the federated schedule and each party's local training (the one FineTuneConfig).

    TOML keys: this class's schedule fields (rounds, strategy, fedbn, server_lr, ...), local_epochs
    (= FineTuneConfig.epochs per round) and the FineTuneConfig fields a round sends (FINETUNE_KEYS'
    values but the seed, which is experiment.seeds).
    """

    rounds: int = 3
    strategy: str = "fedavg"
    fedbn: bool = False  # keep BatchNorm at the sites (FedBN), with any strategy
    server_lr: float = 1.0  # fedavgm: step on the averaged update (1 = plain FedAvg step)
    server_momentum: float = 0.0  # fedavgm: heavy-ball momentum across rounds
    lr_decay: float = 1.0  # federated round r trains at lr x lr_decay^(r-1) (pooled / single-site: constant lr)
    local: FineTuneConfig = field(default_factory=FineTuneConfig)

    @property
    def local_epochs(self) -> int:
        return self.local.epochs

    @property
    def lr(self) -> float:
        return self.local.lr

    @property
    def total_epochs(self) -> int:
        """Pooled and single-site runs get the same epochs as rounds x local epochs (equal compute)."""
        return self.rounds * self.local.epochs

    @classmethod
    def from_section(cls, raw: dict[str, Any]) -> FineTuneSettings:
        raw = dict(raw)
        schedule_keys = [f.name for f in fields(cls) if f.name != "local"]  # the rest is the local FineTuneConfig
        schedule = {k: raw.pop(k) for k in schedule_keys if k in raw}
        if "local_epochs" in raw:
            raw["epochs"] = raw.pop("local_epochs")
        allowed = set(FINETUNE_KEYS.values()) - {"seed"}  # what a round sends; the seed is experiment.seeds
        unknown = sorted(set(raw) - allowed)
        if unknown:
            raise ConfigError(f"unknown key(s) in [finetune]: {', '.join(unknown)}")
        raw["max_steps"] = raw.get("max_steps") or None  # 0 = no cap (a cap is for tests)
        try:
            local = FineTuneConfig.from_dict(raw)
        except TypeError as exc:
            raise ConfigError(f"[finetune]: {exc}") from None
        return cls(local=local, **schedule)


@dataclass(frozen=True)
class FlowerSettings:
    client_num_cpus: float = 1.0
    client_num_gpus: float = -1.0  # < 0 = auto: 0 on CPU, 1/K of a GPU when CUDA exists
    ray_num_cpus: int = 2
    object_store_mb: int = 256
    round_timeout_s: int = 3600
    # an existing Ray cluster ("HOST:PORT", "auto"); "" = start a private one per federated run.
    # With an address, ray_num_cpus / object_store_mb are the cluster's business and are not used.
    ray_address: str = ""


@dataclass(frozen=True)
class SimSettings:
    experiment: ExperimentSettings
    target: TargetSettings
    source: SourceSettings
    finetune: FineTuneSettings
    flower: FlowerSettings
    preset: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _table(config: dict[str, Any], name: str) -> dict[str, Any]:
    raw = config.get(name, {})
    if not isinstance(raw, dict):
        raise ConfigError(f"config section [{name}] must be a table")
    return raw


def _section(config: dict[str, Any], name: str, cls: type) -> Any:
    raw = _table(config, name)
    known = set(cls.__dataclass_fields__)
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(f"unknown key(s) in [{name}]: {', '.join(sorted(unknown))}")
    try:
        return cls(**raw)
    except TypeError as exc:
        raise ConfigError(f"[{name}]: {exc}") from None


def _positive_ints(values: Any, what: str) -> list[int]:
    if not isinstance(values, list) or not values or not all(isinstance(v, int) and v > 0 for v in values):
        raise ConfigError(f"{what} must be a non-empty list of positive integers, got {values!r}")
    return values


def parse_settings(config: dict[str, Any], preset: str = "") -> SimSettings:
    """Build and validate SimSettings from a loaded preset dict."""
    unknown = set(config) - {"experiment", "target", "source", "finetune", "flower"}
    if unknown:
        raise ConfigError(f"unknown config section(s): {', '.join(sorted(unknown))}")
    settings = SimSettings(
        experiment=_section(config, "experiment", ExperimentSettings),
        target=_section(config, "target", TargetSettings),
        source=_section(config, "source", SourceSettings),
        finetune=FineTuneSettings.from_section(_table(config, "finetune")),
        flower=_section(config, "flower", FlowerSettings),
        preset=preset,
    )
    exp, ft = settings.experiment, settings.finetune
    _positive_ints(exp.sizes, "experiment.sizes")
    _positive_ints(exp.k_sites, "experiment.k_sites")
    if not isinstance(exp.seeds, list) or not exp.seeds or not all(isinstance(s, int) for s in exp.seeds):
        raise ConfigError(f"experiment.seeds must be a non-empty list of integers, got {exp.seeds!r}")
    bad = [m for m in exp.methods if m not in METHODS]
    if bad or not exp.methods:
        raise ConfigError(f"experiment.methods must be taken from {', '.join(METHODS)}; got {exp.methods!r}")
    if exp.partition not in SCHEMES:
        raise ConfigError(f"experiment.partition must be one of {', '.join(SCHEMES)}, got {exp.partition!r}")
    check_strategy(ft.strategy, "finetune.strategy")
    if not (isinstance(ft.server_lr, (int, float)) and ft.server_lr > 0):
        raise ConfigError(f"finetune.server_lr must be > 0, got {ft.server_lr!r}")
    if not (isinstance(ft.server_momentum, (int, float)) and 0 <= ft.server_momentum < 1):
        raise ConfigError(f"finetune.server_momentum must be in [0, 1), got {ft.server_momentum!r}")
    if not (isinstance(ft.lr_decay, (int, float)) and 0 < ft.lr_decay <= 1):
        raise ConfigError(f"finetune.lr_decay must be in (0, 1], got {ft.lr_decay!r}")
    if (ft.server_lr != 1.0 or ft.server_momentum) and ft.strategy != "fedavgm":
        raise ConfigError("finetune.server_lr / server_momentum act only with finetune.strategy = 'fedavgm'")
    _check_vendors(settings)
    if not isinstance(settings.flower.ray_address, str):
        raise ConfigError(f"flower.ray_address must be a string (HOST:PORT), got {settings.flower.ray_address!r}")
    for name, value in (("rounds", ft.rounds), ("local_epochs", ft.local.epochs), ("batch_size", ft.local.batch_size)):
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"finetune.{name} must be a positive integer, got {value!r}")
    if not isinstance(settings.source.overrides, list):
        raise ConfigError("source.overrides must be a list of 'key=value' strings")
    return settings


def _check_vendors(settings: SimSettings) -> None:
    from mammo_fl.common.synth.profiles import get_profile

    vendors = settings.target.vendors
    if not isinstance(vendors, list) or not all(isinstance(v, str) for v in vendors):
        raise ConfigError(f"target.vendors must be a list of vendor profile names, got {vendors!r}")
    for name in vendors:
        get_profile(name)  # unknown name -> one-line ConfigError listing the profiles
    if len(vendors) == 1:
        raise ConfigError("target.vendors needs >= 2 profiles (one scanner is the default target)")


def target_vendors(settings: SimSettings) -> list[str]:
    """Vendor profiles of the synthetic target: as given, else for a vendor partition one FFDM profile
    per site of the largest K (at most the 5 FFDM profiles; more sites then share a scanner)."""
    from mammo_fl.common.synth.profiles import SITE_ROTATION

    if settings.target.vendors:
        return list(settings.target.vendors)
    if settings.experiment.partition != "vendor":
        return []
    rotation = SITE_ROTATION["ffdm"]
    return list(rotation[: max(2, min(len(rotation), max(settings.experiment.k_sites)))])


def config_hash(payload: Any, length: int = 12) -> str:
    """Stable short hash of a JSON-able payload (cache keys)."""
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]
