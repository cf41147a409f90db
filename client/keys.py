"""A site's SuperNode key pair, made at the site (`mammo-client keygen --site NAME --out DIR`).

DIR/NAME.key is the private key (EC P-384 in OpenSSH format, what `flower-supernode
--auth-supernode-private-key` reads), created 0600 and never overwritten or copied anywhere by
mammo-fl. DIR/NAME.pub is the public key in OpenSSH format: the only file the site hands to the
coordinator, which registers it with `mammo-server sites add NAME NAME.pub`.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from mammo_fl.common.federation.site_keys import check_site_name, public_key_line
from mammo_fl.common.utils.errors import ConfigError
from mammo_fl.common.utils.secret_files import check_private, write_new_private, write_public


def key_paths(out_dir: Path, site: str) -> tuple[Path, Path]:
    return out_dir / f"{site}.key", out_dir / f"{site}.pub"


def generate_site_keys(site: str, out_dir: Path) -> tuple[Path, Path]:
    """Write DIR/SITE.key (0600) and DIR/SITE.pub; refuses to replace an existing key."""
    check_site_name(site)
    key_path, pub_path = key_paths(out_dir, site)
    if key_path.exists():
        raise ConfigError(f"{key_path} already exists; keys are never overwritten "
                          "(register its .pub, or choose another --out)")
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    write_new_private(key_path, private)
    write_public(pub_path, public_key_line(key.public_key()) + f" {site}\n".encode())
    return key_path, pub_path


def check_private_key(path: Path) -> None:
    """The SuperNode key exists, is private to its owner and parses (one-line error otherwise)."""
    check_private(path, "site key")
    try:
        key = serialization.load_ssh_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ConfigError(f"{path} is not an unencrypted OpenSSH private key "
                          "(make one with `mammo-client keygen`)") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{path} is not an EC private key (make one with `mammo-client keygen`)")
