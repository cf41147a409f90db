"""What a site accepts from the coordinator: approved app bundles and caps on every request.

Defaults: common/presets/site.toml; a site overrides them with `mammo-client --config FILE`.
`mammo-client` writes the resolved values into the SuperNode's node config (flat keys), so the
ClientApp and the app guard of every `flwr-clientapp` process read the same policy; a node config
without them (simulation) gets the defaults. A request outside the caps is refused with a fixed
error code (`SiteRefusal`), never with the values involved.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from mammo_fl.common.federation import protocol as P
from mammo_fl.common.federation.round_config import RoundConfig
from mammo_fl.common.utils.config import PRESET_DIR, load_toml
from mammo_fl.common.utils.errors import ConfigError, MammoError

SITE_PRESET = PRESET_DIR / "site.toml"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class SiteRefusal(MammoError):
    """The site will not do what was asked; `code` is the fixed reason sent to the coordinator."""

    def __init__(self, code: str, detail: str) -> None:
        if code not in P.SITE_ERRORS:
            raise ValueError(f"unknown site error code {code!r}")
        self.code = code
        super().__init__(detail)


@dataclass(frozen=True)
class SitePolicy:
    approve_installed_app: bool = True
    approved_apps: tuple[str, ...] = ()
    max_hist_bins: int = 1000
    max_image_height: int = 1152
    max_image_width: int = 896
    max_local_epochs: int = 5
    max_steps: int = 5000
    min_patients_per_class: int = 3

    @staticmethod
    def key_of(name: str) -> str:
        return name.replace("_", "-")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], where: str) -> SitePolicy:
        """Policy from TOML/node-config values; unknown keys and bad values are one-line errors."""
        known = {cls.key_of(f.name): f for f in fields(cls)}
        out: dict[str, Any] = {}
        for key, value in values.items():
            f = known.get(key)
            if f is None:
                raise ConfigError(f"{where}: unknown site setting {key!r} (known: {', '.join(sorted(known))})")
            out[f.name] = _coerce(key, value, f.default, where)
        policy = cls(**out)
        policy.check(where)
        return policy

    @classmethod
    def load(cls, config_file: Path | None) -> SitePolicy:
        """site.toml defaults <- the site's own config file."""
        values = load_toml(SITE_PRESET)
        if config_file is not None:
            if not config_file.is_file():
                raise ConfigError(f"site config file not found: {config_file}")
            values.update(load_toml(config_file))
        return cls.from_mapping(values, str(config_file or SITE_PRESET))

    @classmethod
    def from_node_config(cls, node_config: Mapping[str, Any]) -> SitePolicy:
        """The policy mammo-client wrote into the node config; defaults for keys it lacks."""
        base = load_toml(SITE_PRESET)
        keys = {cls.key_of(f.name) for f in fields(cls)}
        base.update({k: v for k, v in node_config.items() if k in keys})
        return cls.from_mapping(base, "node config")

    def to_node_config(self) -> dict[str, Any]:
        """Flat scalar keys (node config values cannot be lists: hashes are space-separated)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[self.key_of(f.name)] = " ".join(value) if isinstance(value, tuple) else value
        return out

    def check(self, where: str) -> None:
        for sha in self.approved_apps:
            if not _SHA256.match(sha):
                raise ConfigError(f"{where}: approved-apps entry {sha!r} is not a SHA-256 (64 lowercase hex digits)")
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, int) and not isinstance(value, bool) and value < 0:
                raise ConfigError(f"{where}: {self.key_of(f.name)} must be >= 0")

    def approved(self, installed_sha256: str) -> frozenset[str]:
        """Every bundle hash this site runs."""
        extra = {installed_sha256} if self.approve_installed_app else set()
        return frozenset(self.approved_apps) | extra


def _coerce(key: str, value: Any, default: Any, where: str) -> Any:
    if isinstance(default, tuple):
        items = value.split() if isinstance(value, str) else value
        if not isinstance(items, list | tuple) or not all(isinstance(x, str) for x in items):
            raise ConfigError(f"{where}: {key} must be a list of SHA-256 strings")
        return tuple(x.strip().lower() for x in items)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {key} must be true or false")
        return value
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where}: {key} must be an integer")
    return value


def check_request(policy: SitePolicy, rc: RoundConfig) -> None:
    """Refuse a round request outside the site's caps (SiteRefusal with a fixed code)."""
    if rc.hist_bins > policy.max_hist_bins:
        raise SiteRefusal("over-limit:hist-bins", f"hist-bins {rc.hist_bins} > site cap {policy.max_hist_bins}")
    height = int(rc.preprocessing.get("height", 0) or 0)
    width = int(rc.preprocessing.get("width", 0) or 0)
    if height > policy.max_image_height or width > policy.max_image_width:
        raise SiteRefusal("over-limit:image-size", f"image size {height}x{width} > site cap "
                                                   f"{policy.max_image_height}x{policy.max_image_width}")
    if rc.finetune.epochs > policy.max_local_epochs:
        raise SiteRefusal("over-limit:local-epochs",
                          f"local-epochs {rc.finetune.epochs} > site cap {policy.max_local_epochs}")
    if (rc.finetune.max_steps or 0) > policy.max_steps:
        raise SiteRefusal("over-limit:max-steps", f"max-steps {rc.finetune.max_steps} > site cap {policy.max_steps}")


def check_registered_name(rc: RoundConfig, site_name: str) -> None:
    """The coordinator names the site its key is registered under; a different local name is refused."""
    if rc.registered_site and rc.registered_site != site_name:
        raise SiteRefusal("site-name-mismatch", f"the coordinator has this site's key registered as "
                                                f"{rc.registered_site!r}, but this site is {site_name!r}")
