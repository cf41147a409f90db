"""Configuration: one TOML file per preset, overridden by `--set key=value`.

Presets live in `common/presets/<name>.toml`. A user may pass their own TOML
file instead of a preset name. Overrides use dotted keys (`whole.stage1.epochs=3`)
and TOML value syntax (`lr=1e-5`, `arch='resnet50'`, `sizes=[20,40]`); a bare word
that is not valid TOML is taken as a string.
"""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path
from typing import Any

from mammo_fl.common.utils.errors import ConfigError

PRESET_DIR = Path(__file__).parents[1] / "presets"


def preset_path(name_or_path: str, family: str) -> Path:
    """Resolve a preset name (`cpu` -> presets/<family>_cpu.toml) or an explicit TOML path."""
    candidate = Path(name_or_path)
    if candidate.suffix == ".toml":
        if not candidate.is_file():
            raise ConfigError(f"config file not found: {candidate}")
        return candidate
    path = PRESET_DIR / f"{family}_{name_or_path}.toml"
    if not path.is_file():
        known = sorted(p.stem.removeprefix(f"{family}_") for p in PRESET_DIR.glob(f"{family}_*.toml"))
        raise ConfigError(f"unknown {family} preset {name_or_path!r}; known: {', '.join(known) or 'none'}")
    return path


def load_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=1e-5` -> (['a', 'b'], 1e-05)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key.split("."), value


def apply_overrides(config: dict[str, Any], overrides: list[str] | None, strict: bool = True) -> dict[str, Any]:
    """Return a copy of `config` with dotted-key overrides applied.

    With `strict`, a key that the config does not have is an error (typos must not
    silently do nothing).
    """
    out = copy.deepcopy(config)
    for item in overrides or []:
        keys, value = parse_override(item)
        node = out
        for k in keys[:-1]:
            if not isinstance(node.get(k), dict):
                if strict:
                    raise ConfigError(f"unknown config section {'.'.join(keys[:-1])!r} in override {item!r}")
                node[k] = {}
            node = node[k]
        if strict and keys[-1] not in node:
            raise ConfigError(f"unknown config key {'.'.join(keys)!r} (override {item!r})")
        old = node.get(keys[-1])
        if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        node[keys[-1]] = value
    return out


def load_config(name_or_path: str, family: str, overrides: list[str] | None = None) -> dict[str, Any]:
    """Load a preset (or TOML file) and apply `--set` overrides."""
    return apply_overrides(load_toml(preset_path(name_or_path, family)), overrides)
