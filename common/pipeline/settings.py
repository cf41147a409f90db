"""The settings of one `mammo-train` run, typed and validated once.

A train preset (common/presets/train_*.toml, after `--set` overrides) is parsed into one frozen
`RunSettings` tree; a missing, unknown or ill-typed value is a one-line `ConfigError` before any
work starts. The steps (`common.pipeline.steps`) read only this object. The resolved preset dict is
kept as `RunSettings.source`: it is what `RUNDIR/config.json` records and what a finished patch
classifier is compared against before it is reused.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mammo_fl.common.imaging.geometry import PreprocessSettings
from mammo_fl.common.pipeline.baseline import CUTOFFS, BaselineSettings
from mammo_fl.common.pipeline.patches.sampling import SamplingSettings
from mammo_fl.common.training.augment import AugmentSettings
from mammo_fl.common.training.patch import PATCH_STAGE_LAYOUT
from mammo_fl.common.training.staged import Stage, stages_from_config
from mammo_fl.common.training.whole import WHOLE_STAGE_LAYOUT
from mammo_fl.common.utils.config import load_config
from mammo_fl.common.utils.errors import ConfigError

TOP_LEVEL_KEYS = ("seed", "device", "threads", "num_workers", "progress")
SECTIONS = ("data", "patches", "patch_model", "patch_train", "whole_model", "tops", "whole_train", "evaluate",
            "baseline")
PATCH_CONFIG_KEYS = ("seed", "patches", "patch_model", "patch_train")  # what a patch classifier depends on


@dataclass(frozen=True)
class DataSettings:
    """[data]: image size and mode, the grey mean (None = measure on the training images), the cache."""

    preprocess: PreprocessSettings
    mean: float | None = None
    cache_dir: str = ""  # "" = INDEXDIR/cache
    workers: int = 0  # processes filling the cache and searching the patch set's blobs; 0 = all cores


@dataclass(frozen=True)
class PatchModelSettings:
    """[patch_model]: the patch classifier's trunk."""

    arch: str
    dropout: float = 0.0
    pretrained: str = ""  # local torchvision ImageNet state_dict ("" = random init)


@dataclass(frozen=True)
class TrainSettings:
    """[patch_train] / [whole_train]: batch size, augmentation and the training stages."""

    batch_size: int
    augment: bool
    augmentation: AugmentSettings
    stages: tuple[Stage, ...]


@dataclass(frozen=True)
class WholeModelSettings:
    """[whole_model] + the chosen [tops.*] table."""

    top: str
    top_spec: dict[str, Any] = field(compare=False)
    dropout: float = 0.0


@dataclass(frozen=True)
class EvaluateSettings:
    """[evaluate]: flip TTA (A-AUC), bootstrap resamples, operating point, inference batch size."""

    tta: bool = True
    bootstrap: int = 2000
    threshold: float = 0.5
    batch_size: int = 8


@dataclass(frozen=True)
class RunSettings:
    seed: int
    device: str
    threads: int  # torch intra-op threads (0 = torch default)
    num_workers: int  # DataLoader workers
    progress: bool
    data: DataSettings
    patches: SamplingSettings
    patch_model: PatchModelSettings
    patch_train: TrainSettings
    whole_model: WholeModelSettings
    whole_train: TrainSettings
    evaluate: EvaluateSettings
    baseline: BaselineSettings | None  # None: the preset has no [baseline] table
    source: dict[str, Any] = field(repr=False, compare=False)  # the resolved preset these were parsed from

    def patch_config(self) -> dict[str, Any]:
        """The settings a patch classifier depends on (a finished one is reused only if they match)."""
        return copy.deepcopy({k: self.source.get(k) for k in PATCH_CONFIG_KEYS})

    def require_baseline(self) -> BaselineSettings:
        if self.baseline is None:
            raise ConfigError("config section [baseline] is missing")
        return self.baseline


# ----------------------------------------------------------------------------- parsing


def _section(config: Mapping[str, Any], name: str) -> dict[str, Any]:
    value = config.get(name)
    if not isinstance(value, dict):
        raise ConfigError(f"config section [{name}] is missing")
    return value


def _check_keys(section: Mapping[str, Any], known: Sequence[str], where: str) -> None:
    unknown = set(section) - set(known)
    if unknown:
        raise ConfigError(f"unknown key(s) in [{where}]: {', '.join(sorted(unknown))}")


_REQUIRED = object()


def _value(section: Mapping[str, Any], key: str, kind: Callable[[Any], Any], where: str,
           default: Any = _REQUIRED) -> Any:
    """`kind(section[key])` (or `default` when absent); a missing required key or a bad value is a ConfigError."""
    if key not in section:
        if default is _REQUIRED:
            raise ConfigError(f"{where}.{key} is missing")
        return default
    raw = section[key]
    if kind is bool:
        if not isinstance(raw, bool):
            raise ConfigError(f"{where}.{key} must be true or false, got {raw!r}")
        return raw
    if kind in (int, float) and isinstance(raw, bool):
        raise ConfigError(f"{where}.{key} must be a number, got {raw!r}")
    try:
        return kind(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}.{key} must be {kind.__name__}, got {raw!r}") from None


def _mean(value: Any) -> float | None:
    if value == "auto":
        return None
    if isinstance(value, bool):
        raise ConfigError(f"data.mean must be a number or \"auto\", got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"data.mean must be a number or \"auto\", got {value!r}") from None


def _data(section: dict[str, Any]) -> DataSettings:
    _check_keys(section, ("height", "width", "mode", "mean", "cache_dir", "workers"), "data")
    preprocess = PreprocessSettings(_value(section, "height", int, "data"), _value(section, "width", int, "data"),
                                    _value(section, "mode", str, "data", "paper"))
    return DataSettings(preprocess, _mean(section.get("mean", "auto")),
                        str(section.get("cache_dir") or ""), _value(section, "workers", int, "data", 0))


def _augmentation(section: dict[str, Any], where: str) -> AugmentSettings:
    table = section.get("augmentation", {})
    if not isinstance(table, dict):
        raise ConfigError(f"the augmentation setting must be a table, e.g. [{where}.augmentation]")
    return AugmentSettings.from_dict(table)


def _train(section: dict[str, Any], where: str, layout: dict[str, str], batch_size: int) -> TrainSettings:
    _check_keys(section, ("batch_size", "augment", "augmentation", *layout), where)
    return TrainSettings(batch_size=_value(section, "batch_size", int, where, batch_size),
                         augment=_value(section, "augment", bool, where, True),
                         augmentation=_augmentation(section, where),
                         stages=tuple(stages_from_config(section, layout, where)))


def _patch_model(section: dict[str, Any]) -> PatchModelSettings:
    _check_keys(section, ("arch", "dropout", "pretrained"), "patch_model")
    return PatchModelSettings(_value(section, "arch", str, "patch_model"),
                              _value(section, "dropout", float, "patch_model", 0.0),
                              str(section.get("pretrained") or ""))


def _whole_model(section: dict[str, Any], tops: Any) -> WholeModelSettings:
    _check_keys(section, ("top", "dropout"), "whole_model")
    name = str(section.get("top"))
    tops = tops if isinstance(tops, dict) else {}
    if not isinstance(tops.get(name), dict):
        raise ConfigError(f"whole_model.top = {name!r} is not a [tops.*] entry; known: {', '.join(tops)}")
    return WholeModelSettings(name, copy.deepcopy(tops[name]), _value(section, "dropout", float, "whole_model", 0.0))


def _evaluate(section: dict[str, Any]) -> EvaluateSettings:
    _check_keys(section, ("tta", "bootstrap", "threshold", "batch_size"), "evaluate")
    return EvaluateSettings(tta=_value(section, "tta", bool, "evaluate", True),
                            bootstrap=_value(section, "bootstrap", int, "evaluate", 2000),
                            threshold=_value(section, "threshold", float, "evaluate", 0.5),
                            batch_size=_value(section, "batch_size", int, "evaluate", 8))


def _baseline(section: dict[str, Any] | None, seed: int) -> BaselineSettings | None:
    if section is None:
        return None
    if not isinstance(section, dict):
        raise ConfigError("config section [baseline] must be a table")
    _check_keys(section, ("cutoffs", "n_estimators", "max_depth", "min_samples_split"), "baseline")
    cutoffs = section.get("cutoffs", CUTOFFS)
    if not isinstance(cutoffs, (list, tuple)):
        raise ConfigError(f"baseline.cutoffs must be a list of numbers, got {cutoffs!r}")
    split = section.get("min_samples_split", 300)
    if isinstance(split, bool) or not isinstance(split, (int, float)):
        raise ConfigError(f"baseline.min_samples_split must be a number, got {split!r}")
    return BaselineSettings(cutoffs=tuple(_value({"c": c}, "c", float, "baseline.cutoffs") for c in cutoffs),
                            n_estimators=_value(section, "n_estimators", int, "baseline", 500),
                            max_depth=_value(section, "max_depth", int, "baseline", 9),
                            min_samples_split=split, seed=seed)


def parse_run_settings(config: Mapping[str, Any]) -> RunSettings:
    """Validate a resolved train preset and return it as typed settings (ConfigError on the first problem)."""
    _check_keys(config, (*TOP_LEVEL_KEYS, *SECTIONS), "top level")
    seed = _value(config, "seed", int, "config", 0)
    return RunSettings(
        seed=seed,
        device=_value(config, "device", str, "config", "auto"),
        threads=_value(config, "threads", int, "config", 0),
        num_workers=_value(config, "num_workers", int, "config", 0),
        progress=_value(config, "progress", bool, "config", True),
        data=_data(_section(config, "data")),
        patches=SamplingSettings.from_config(_section(config, "patches")),
        patch_model=_patch_model(_section(config, "patch_model")),
        patch_train=_train(_section(config, "patch_train"), "patch_train", PATCH_STAGE_LAYOUT, 32),
        whole_model=_whole_model(_section(config, "whole_model"), config.get("tops")),
        whole_train=_train(_section(config, "whole_train"), "whole_train", WHOLE_STAGE_LAYOUT, 2),
        evaluate=_evaluate(_section(config, "evaluate")),
        baseline=_baseline(config.get("baseline"), seed),
        source=copy.deepcopy(dict(config)),
    )


def load_run_settings(preset: str, overrides: Sequence[str] = (), *, device: str | None = None,
                      progress: bool | None = None) -> RunSettings:
    """A train preset (name or TOML path) + `--set` overrides (+ the CLI's --device / --quiet) -> RunSettings."""
    config = load_config(preset, "train", list(overrides))
    if device:
        config["device"] = device
    if progress is not None:
        config["progress"] = progress
    return parse_run_settings(config)
