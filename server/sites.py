"""The registry of sites allowed to join: name -> public key (`mammo-server sites add|list|remove`).

One key per name and one name per key. The public key is copied into HOME/sites/NAME.pub (the
site keeps its private key; the coordinator never sees it). Changing the registry while a run is
going also registers or unregisters the key with that run's SuperLink (server/site_links.py).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from mammo_fl.common.federation.site_keys import check_site_name, fingerprint, load_public_key, public_key_line
from mammo_fl.common.utils.errors import ConfigError
from mammo_fl.common.utils.secret_files import write_public
from mammo_fl.server.home import CoordinatorHome
from mammo_fl.server.rundir import atomic_write_text


@dataclass(frozen=True)
class SiteEntry:
    name: str
    fingerprint: str
    added: str  # UTC, ISO 8601


def load_registry(home: CoordinatorHome) -> dict[str, SiteEntry]:
    try:
        raw = json.loads(home.registry.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{home.registry}: unreadable site registry ({exc})") from None
    return {name: SiteEntry(**entry) for name, entry in raw.items()}


def _save_registry(home: CoordinatorHome, sites: dict[str, SiteEntry]) -> None:
    home.root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(home.registry, json.dumps({n: asdict(e) for n, e in sorted(sites.items())}, indent=1) + "\n")


def public_key_file(home: CoordinatorHome, name: str) -> Path:
    return home.keys_dir / f"{name}.pub"


def add_site(home: CoordinatorHome, name: str, pub: Path) -> SiteEntry:
    """Register `name` with the key in `pub`; refuses a taken name or a key already registered."""
    check_site_name(name)
    key = load_public_key(pub)
    fp = fingerprint(key)
    sites = load_registry(home)
    if name in sites:
        if sites[name].fingerprint == fp:
            return sites[name]
        raise ConfigError(f"site {name} is already registered with another key ({sites[name].fingerprint}); "
                          f"`mammo-server sites remove {name}` first")
    for other in sites.values():
        if other.fingerprint == fp:
            raise ConfigError(f"this key ({fp}) is already registered as site {other.name}; one key per site")
    write_public(public_key_file(home, name), public_key_line(key) + b"\n")
    entry = SiteEntry(name, fp, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    sites[name] = entry
    _save_registry(home, sites)
    return entry


def remove_site(home: CoordinatorHome, name: str) -> SiteEntry:
    sites = load_registry(home)
    if name not in sites:
        raise ConfigError(f"site {name!r} is not registered (`mammo-server sites list --home {home.root}`)")
    entry = sites.pop(name)
    _save_registry(home, sites)
    retired = home.keys_dir / "removed"
    retired.mkdir(parents=True, exist_ok=True)
    pub = public_key_file(home, name)
    if pub.exists():  # kept for the record (audits), out of the registry's folder
        shutil.move(str(pub), retired / f"{name}.{int(time.time())}.pub")
    return entry
