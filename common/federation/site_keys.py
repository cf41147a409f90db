"""Site names and SuperNode public keys: what both sides check the same way.

A site is known to the coordinator by a name and one EC public key (OpenSSH format, NIST curve:
what Flower's SuperNode authentication accepts). The site makes the pair itself
(`mammo-client keygen`); the coordinator registers the public half (`mammo-server sites add`).
"""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from mammo_fl.common.utils.errors import ConfigError

# Site names become file names, node-config values and metric columns: keep them plain.
SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
NIST_CURVES = ("secp256r1", "secp384r1", "secp521r1")


def check_site_name(name: str) -> str:
    if not SITE_NAME.match(name or ""):
        raise ConfigError(f"site name {name!r} must be 1-63 letters, digits, '.', '_' or '-' "
                          "(starting with a letter or digit)")
    return name


def load_public_key(path: Path) -> ec.EllipticCurvePublicKey:
    """An OpenSSH EC public key on a NIST curve, else a one-line ConfigError."""
    try:
        key = serialization.load_ssh_public_key(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"cannot read public key {path}: {exc.strerror}") from None
    except (ValueError, TypeError, IndexError, UnsupportedAlgorithm):
        raise ConfigError(f"{path} is not an OpenSSH public key (make one with `mammo-client keygen`)") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name not in NIST_CURVES:
        raise ConfigError(f"{path} is not an EC public key on a NIST curve (make one with `mammo-client keygen`)")
    return key


def public_key_line(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)


def fingerprint(key: ec.EllipticCurvePublicKey) -> str:
    """OpenSSH-style SHA256 fingerprint (what `ssh-keygen -lf KEY.pub` prints)."""
    blob = public_key_line(key).split()[1]
    digest = hashlib.sha256(base64.b64decode(blob)).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")
