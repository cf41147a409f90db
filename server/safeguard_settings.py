"""Settings of the coordinator's safeguards: update screening (`screening.*`) and differential privacy (`dp.*`).

Flower's run config is flat, but it flattens nested TOML tables into dotted keys
(`flwr.common.config.flatten_dict`): `[dp] noise-multiplier = 1.0` in a preset, in
server/flower_app/pyproject.toml or in `flwr run --run-config` arrives in the ServerApp as the key
`dp.noise-multiplier`. So one spelling works everywhere: `mammo-server --set dp.noise-multiplier=1.0`,
`[dp]` tables in TOML files, and `dp.noise-multiplier` in the run config.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, TypeVar

from mammo_fl.common.federation.round_config import coerce_value
from mammo_fl.common.federation.strategies import MEAN_STRATEGIES
from mammo_fl.common.utils.errors import ConfigError

T = TypeVar("T")


def flatten_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested TOML tables -> dotted keys, as Flower does with run configs."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_config(value, f"{name}."))
        else:
            out[name] = value
    return out


def section_from_run_config(cls: type[T], prefix: str, run_config: Mapping[str, Any]) -> T:
    """A settings section from the dotted keys `prefix` + field name (dashed); absent keys keep defaults."""
    default = cls()
    values: dict[str, Any] = {}
    for f in fields(cls):  # type: ignore[arg-type]
        key = prefix + f.name.replace("_", "-")
        if key in run_config:
            values[f.name] = coerce_value(key, run_config[key], getattr(default, f.name))
    return cls(**values)


def section_to_run_config(section: Any, prefix: str) -> dict[str, Any]:
    return {prefix + f.name.replace("_", "-"): getattr(section, f.name) for f in fields(section)}


@dataclass(frozen=True)
class ScreeningSettings:
    """What the coordinator accepts from a site (run-config keys `screening.*`)."""

    # Bound on a site's update norm ||w_site - w_global||: `norm-factor` x the lower median of the
    # round's update norms (0 = no relative bound) and/or an absolute `norm-max` (0 = none).
    norm_factor: float = 3.0
    norm_max: float = 0.0
    action: str = "clip"  # clip | reject: what happens to an update above the bound
    # num-examples: at most `max-examples` (else rejected), at most what the site declared in its first
    # accepted reply of the run, and at most `examples-factor` x the round's lower median (0 = off).
    max_examples: int = 1_000_000
    examples_factor: float = 5.0

    def check(self) -> None:
        if self.action not in ("clip", "reject"):
            raise ConfigError(f"screening.action must be clip or reject, got {self.action!r}")
        if self.norm_factor < 0 or self.norm_max < 0 or self.examples_factor < 0:
            raise ConfigError("screening.norm-factor, norm-max and examples-factor must be >= 0 (0 = off)")
        if self.max_examples < 1:
            raise ConfigError("screening.max-examples must be >= 1")


@dataclass(frozen=True)
class PrivacySettings:
    """Differential privacy of what the sites release (run-config keys `dp.*`); off while noise-multiplier is 0."""

    noise_multiplier: float = 0.0  # Gaussian noise std = noise-multiplier x clip-norm (/ sites, at the server)
    clip_norm: float = 1.0  # L2 bound every site clips its update to
    delta: float = 1e-5  # epsilon is reported at this delta
    noise_at: str = "server"  # server (central DP, Flower's wrapper) | site (each site noises its own update)
    histogram_noise: float = 0.0  # Gaussian std (in counts) each site adds to every histogram bin

    @property
    def enabled(self) -> bool:
        return self.noise_multiplier > 0

    def round_fields(self) -> dict[str, float]:
        """What each site is asked to do (RoundConfig fields): clip, noise its update, noise its histograms."""
        return {
            "dp_clip_norm": self.clip_norm if self.enabled else 0.0,
            "dp_site_noise": self.noise_multiplier if self.enabled and self.noise_at == "site" else 0.0,
            "dp_histogram_noise": self.histogram_noise,
        }

    def check(self, strategy: str) -> None:
        if self.noise_multiplier < 0 or self.histogram_noise < 0:
            raise ConfigError("dp.noise-multiplier and dp.histogram-noise must be >= 0 (0 = off)")
        if self.clip_norm <= 0:
            raise ConfigError("dp.clip-norm must be > 0")
        if not 0 < self.delta < 1:
            raise ConfigError("dp.delta must be in (0, 1)")
        if self.noise_at not in ("server", "site"):
            raise ConfigError(f"dp.noise-at must be server or site, got {self.noise_at!r}")
        if self.enabled and self.noise_at == "server" and strategy not in MEAN_STRATEGIES:
            raise ConfigError(
                f"dp.noise-at=server needs strategy {' or '.join(MEAN_STRATEGIES)} (the noise is calibrated to a "
                f"mean of clipped updates), not {strategy}; use dp.noise-at=site with {strategy}"
            )


SECTIONS: dict[str, tuple[str, type]] = {"screening": ("screening.", ScreeningSettings), "dp": ("dp.", PrivacySettings)}
