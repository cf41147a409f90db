"""Tell the coordinator when a SuperNode with an unregistered key knocks.

Flower's SuperLink refuses such a node itself (`ApiError:2004 ... No SuperNode found with the
given public key`) and writes the offered key into its log. `KeyRefusals.poll()` reads the new
log lines and returns one console line per unknown key fingerprint, so the coordinator sees
"refused a SuperNode whose key is not registered (SHA256:...)" while the site sees the matching
line from mammo-client.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from mammo_fl.common.federation.site_keys import fingerprint

_REFUSED = re.compile(r"activate-node\]\[ApiError:2004\].*?b'(-----BEGIN PUBLIC KEY-----.*?-----END PUBLIC KEY-----)")


def refused_fingerprints(text: str) -> list[str]:
    """Fingerprints of the keys in Flower's activation refusals within `text` (in order, repeated)."""
    out = []
    for match in _REFUSED.finditer(text):
        pem = match.group(1).replace("\\n", "\n").encode() + b"\n"
        try:
            key = serialization.load_pem_public_key(pem)
        except ValueError:
            continue
        if isinstance(key, ec.EllipticCurvePublicKey):
            out.append(fingerprint(key))
    return out


@dataclass
class KeyRefusals:
    log: Path
    offset: int = 0
    seen: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.offset = self.log.stat().st_size if self.log.exists() else 0  # only this launch's refusals

    def poll(self) -> list[str]:
        try:
            with open(self.log, "rb") as fh:
                fh.seek(self.offset)
                data = fh.read()
        except OSError:
            return []
        cut = data.rfind(b"\n") + 1  # whole lines only
        self.offset += cut
        lines = []
        for fp in refused_fingerprints(data[:cut].decode("utf-8", errors="replace")):
            if fp not in self.seen:
                self.seen.add(fp)
                lines.append(f"  ! refused a SuperNode whose key is not registered ({fp}); "
                             "if it is a hospital of this federation: `mammo-server sites add NAME NAME.pub`")
        return lines
