"""What a hospital's operator sees: one line for each refusal, on the site's own console.

Two sources: the SuperNode's log when it exits (Flower refused the site's key, or TLS failed),
and the site's client.log, where the ClientApp and the app guard write every refused request
(first line of each entry: a refused app bundle, a name mismatch, a request over the site's caps).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_ENTRY = re.compile(r"^\S+Z (refused app bundle .*|\w+ round \d+ failed \[[^\]]+\]: .*)$")


def supernode_exit_reason(log: Path, offset: int, site: str) -> str | None:
    """Why the SuperNode stopped, from the log written since `offset`, when it is something the
    site can act on; None otherwise."""
    try:
        with open(log, "rb") as fh:
            fh.seek(offset)
            text = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return None
    if "[code: 2004]" in text or "Failed to activate SuperNode" in text:
        return (f"the coordinator refused this site's key (not registered, or removed): send {site}.pub to the "
                f"coordinator (`mammo-server sites add {site} {site}.pub`)")
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return "TLS: the coordinator's certificate does not verify against --ca (wrong ca.pem or host name?)"
    return None


def log_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


@dataclass
class RefusalLines:
    """New refusal lines of the site's client.log since the last call."""

    log: Path
    offset: int = -1

    def poll(self) -> list[str]:
        if self.offset < 0:
            self.offset = log_size(self.log)  # only what happens from now on
            return []
        try:
            with open(self.log, "rb") as fh:
                fh.seek(self.offset)
                data = fh.read()
        except OSError:
            return []
        cut = data.rfind(b"\n") + 1
        self.offset += cut
        out = []
        for line in data[:cut].decode("utf-8", errors="replace").splitlines():
            match = _ENTRY.match(line)
            if match:
                out.append(match.group(1)[:300])
        return out
