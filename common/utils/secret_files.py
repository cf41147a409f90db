"""Writing key files: created 0600, never overwritten, never moved.

A private key is written once, with owner-only permissions from the first byte (the file is
created with mode 0600, not chmod-ed afterwards), and an existing file is never replaced: a
second `init`/`keygen` keeps the key that sites and certificates already depend on.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from mammo_fl.common.utils.errors import ConfigError

PRIVATE_MODE = 0o600


def write_new_private(path: Path, data: bytes) -> None:
    """Create `path` with mode 0600 and write `data`; a ConfigError if it already exists."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_MODE)
    except FileExistsError:
        raise ConfigError(f"{path} already exists; keys are never overwritten") from None
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def write_public(path: Path, data: bytes) -> None:
    """Write a public file (certificate, public key) atomically, mode 0644."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def check_private(path: Path, what: str) -> None:
    """One-line refusal of a missing key or one that others can read (as ssh does)."""
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist")
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ConfigError(f"{what} {path} is readable by others (mode {mode:04o}); run: chmod 600 {path}")
