"""Which site a Flower node is: the name its key was registered under, never what it declares.

With SuperNode authentication a node id stands for one registered public key. `mammo-server`
(and `mammo-server sites add/remove` during a run) registers each site's key with the SuperLink
and records node id -> site name in RUNDIR/.superlink/site_nodes.json; the ServerApp reads it
before every exchange (run config `site-nodes`). A node that is not in it (a removed site, a
key registered behind mammo-server's back) gets no model and its replies are refused; a reply
that declares another site's name is refused. Without the file (`--insecure` lab mode, mammo-sim)
sites are known by the name they declare.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mammo_fl.common.utils.errors import ConfigError
from mammo_fl.server.rundir import atomic_write_text

FILE_NAME = "site_nodes.json"


def read_site_nodes(path: Path) -> dict[int, str]:
    """node id -> registered site name (empty when the file does not exist yet)."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: unreadable site/node map ({exc})") from None
    return {int(node): str(name) for node, name in raw.items()}


def write_site_nodes(path: Path, nodes: dict[int, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps({str(k): v for k, v in sorted(nodes.items())}, indent=1) + "\n")


@dataclass(frozen=True)
class SiteIdentity:
    """The ServerApp's view: `path` empty = lab mode (declared names)."""

    path: str = ""

    @property
    def enforced(self) -> bool:
        return bool(self.path)

    def names(self) -> dict[int, str] | None:
        """node id -> registered name, read fresh (sites may be added or removed during a run)."""
        return read_site_nodes(Path(self.path)) if self.path else None

    def split(self, nodes: list[int]) -> tuple[list[int], list[int]]:
        """(nodes of registered sites, nodes of no registered site)."""
        names = self.names()
        if names is None:
            return list(nodes), []
        return [n for n in nodes if n in names], [n for n in nodes if n not in names]
