"""The run config a coordinator launch sends: preset <- --config file <- --set <- explicit flags.

Written as a TOML file for `flwr run --run-config FILE`; every key must be declared in the
Flower app's server/flower_app/pyproject.toml (`flwr run` refuses others).
"""

from __future__ import annotations

import argparse
import uuid
from pathlib import Path
from typing import Any

import tomli_w

from mammo_fl.common.utils.config import PRESET_DIR, apply_overrides, load_toml
from mammo_fl.common.utils.errors import ConfigError
from mammo_fl.server.settings import FederationSettings


def load_run_config(args: argparse.Namespace, rundir: Path) -> dict[str, Any]:
    """The launch's run config (validated); unknown keys are errors."""
    config = load_toml(PRESET_DIR / "federation.toml")
    if args.config is not None:
        if not args.config.is_file():
            raise ConfigError(f"config file not found: {args.config}")
        _merge(config, load_toml(args.config), str(args.config))
    config = apply_overrides(config, [flat_override(item, config) for item in args.overrides])
    config["initial-model"] = str(args.model.resolve())
    config["out-dir"] = str(rundir)
    config["resume"] = bool(args.resume)
    config["launch-id"] = uuid.uuid4().hex[:12]
    if args.rounds is not None:
        config["num-server-rounds"] = args.rounds
    if args.min_sites is not None:
        config["min-sites"] = args.min_sites
    FederationSettings.from_run_config(config)  # validates types and ranges
    return config


def _merge(config: dict[str, Any], new: dict[str, Any], source: str, prefix: str = "") -> None:
    """Override known keys in place. A [dp]/[screening] table overrides only the keys it lists (they are
    tables in the preset too); any other table is a section of flat keys (`[operating-point] specificity`
    -> `operating-point-specificity`)."""
    for key, value in new.items():
        if isinstance(value, dict) and not isinstance(config.get(key), dict):
            _merge(config, {f"{key}-{k}": v for k, v in value.items()}, source, prefix)
        elif key not in config:
            raise ConfigError(f"{source}: unknown federation setting {prefix + key!r}")
        elif isinstance(config[key], dict) and isinstance(value, dict):
            _merge(config[key], value, source, f"{prefix}{key}.")
        else:
            config[key] = value


def write_run_config(config: dict[str, Any], path: Path) -> None:
    path.write_text(tomli_w.dumps(config), encoding="utf-8")


def flat_override(item: str, config: dict[str, Any]) -> str:
    """`operating-point.specificity=0.95` -> `operating-point-specificity=0.95` where the flat key exists:
    Flower's run config is flat and dashed, the user-facing form may use a section."""
    key, sep, value = item.partition("=")
    flat = key.strip().replace(".", "-")
    return f"{flat}{sep}{value}" if "." in key and flat in config else item

