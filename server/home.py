"""The coordinator's home folder (`--home HOME`): its CA, server certificate and registered sites.

    HOME/ca.key, ca.pem          the federation CA (ca.pem is what hospitals get)
    HOME/server.key, server.pem  the certificate of the public proxy and the loopback SuperLink
    HOME/sites.json, sites/*.pub the registered sites: name -> public key (what `sites add` stores)
    HOME/live.json               the running coordinator (so `sites add/remove` reach its SuperLink)
    HOME/.lock                   serialises registry changes and key registrations
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from mammo_fl.common.utils.errors import ConfigError


@dataclass(frozen=True)
class CoordinatorHome:
    root: Path

    @property
    def ca_key(self) -> Path:
        return self.root / "ca.key"

    @property
    def ca_pem(self) -> Path:
        return self.root / "ca.pem"

    @property
    def server_key(self) -> Path:
        return self.root / "server.key"

    @property
    def server_pem(self) -> Path:
        return self.root / "server.pem"

    @property
    def registry(self) -> Path:
        return self.root / "sites.json"

    @property
    def keys_dir(self) -> Path:
        return self.root / "sites"

    @property
    def live_file(self) -> Path:
        return self.root / "live.json"

    def check_initialised(self) -> CoordinatorHome:
        missing = [p.name for p in (self.ca_pem, self.server_pem, self.server_key) if not p.is_file()]
        if missing:
            raise ConfigError(f"{self.root} is not a coordinator home (no {', '.join(missing)}): "
                              f"run `mammo-server init --home {self.root} --host HOST` first")
        return self

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive lock over the registry and the live SuperLink's key registrations."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
