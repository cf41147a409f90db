"""The coordinator's own small PKI: a CA and one server certificate (made with `cryptography`).

`mammo-server init` writes HOME/ca.key + ca.pem (the CA; ca.pem is the one file hospitals get)
and HOME/server.key + server.pem (presented by the public proxy and by the loopback SuperLink).
The server certificate names every host hospitals dial (--host) plus `localhost` and
`127.0.0.1`, which the proxy and the `flwr` CLI use to reach the SuperLink on loopback.
Keys are EC P-384, written 0600 and never overwritten: a second `init` reuses them and only
re-issues server.pem (e.g. with another --host).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mammo_fl.common.utils.errors import ConfigError
from mammo_fl.common.utils.secret_files import write_new_private, write_public

LOOPBACK_NAMES = ("localhost", "127.0.0.1")
CA_DAYS = 3650
SERVER_DAYS = 825  # the longest lifetime mainstream TLS clients accept
_DNS_NAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _load_or_create_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """The key in `path`, or a new one written there 0600 (an existing key is never replaced)."""
    if path.exists():
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (ValueError, TypeError):
            raise ConfigError(f"{path} is not an unencrypted PEM private key") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ConfigError(f"{path} is not an EC private key")
        return key
    key = _new_key()
    write_new_private(path, _key_pem(key))
    return key


def subject_alt_names(hosts: list[str]) -> list[x509.GeneralName]:
    """SAN entries for `hosts` + loopback; IP literals as IP entries, the rest as DNS names."""
    names: list[x509.GeneralName] = []
    seen: set[str] = set()
    for host in [*hosts, *LOOPBACK_NAMES]:
        host = host.strip().strip("[]").lower()
        if not host or host in seen:
            continue
        seen.add(host)
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            if not _DNS_NAME.match(host):
                raise ConfigError(f"--host {host!r} is neither an IP address nor a DNS name") from None
            names.append(x509.DNSName(host))
    return names


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)  # tolerate small clock skew


def _ca_certificate(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mammo-fl federation CA")])
    return (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now()).not_valid_after(_now() + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA384())
    )


def _server_certificate(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate,
                        key: ec.EllipticCurvePrivateKey, sans: list[x509.GeneralName]) -> x509.Certificate:
    first = sans[0].value
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, str(first))]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now()).not_valid_after(_now() + dt.timedelta(days=SERVER_DAYS))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA384())
    )


def _load_ca_certificate(path: Path, key: ec.EllipticCurvePrivateKey) -> x509.Certificate | None:
    """The existing CA certificate when it belongs to `key` (hospitals already trust it)."""
    if not path.exists():
        return None
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except ValueError:
        raise ConfigError(f"{path} is not a PEM certificate") from None
    if cert.public_key().public_numbers() != key.public_key().public_numbers():
        raise ConfigError(f"{path} does not belong to the CA key next to it; restore the matching pair")
    return cert


def init_pki(ca_key_path: Path, ca_pem: Path, server_key_path: Path, server_pem: Path,
             hosts: list[str]) -> list[str]:
    """Create (or reuse) the CA and server keys and issue server.pem for `hosts`; returns the SAN list."""
    sans = subject_alt_names(hosts)
    ca_key = _load_or_create_key(ca_key_path)
    ca_cert = _load_ca_certificate(ca_pem, ca_key)
    if ca_cert is None:
        ca_cert = _ca_certificate(ca_key)
        write_public(ca_pem, ca_cert.public_bytes(serialization.Encoding.PEM))
    server_key = _load_or_create_key(server_key_path)
    cert = _server_certificate(ca_key, ca_cert, server_key, sans)
    write_public(server_pem, cert.public_bytes(serialization.Encoding.PEM))
    return [str(name.value) for name in sans]


def certificate_names(pem: Path) -> list[str]:
    """The SAN entries of a certificate (to check that --address is one of them)."""
    cert = x509.load_pem_x509_certificate(pem.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(v) for v in san.get_values_for_type(x509.DNSName)] + [
        str(v) for v in san.get_values_for_type(x509.IPAddress)]
