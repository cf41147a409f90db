"""Atomic file writes: write a temporary file next to the destination, then rename it over.

A reader (another process, a resumed run, a crashed-and-restarted site) sees either the old
file or the new one, never half a file. The temporary name is unique per call (`mkstemp`), so
concurrent writers of the same destination (cache worker processes) never share one, and it
ends with the destination's suffix, so writers that pick a format from the name (`np.savez`
adds `.npz` otherwise) write what they are told. A failed write leaves no temporary behind.

- `atomic_write_bytes / atomic_write_text / atomic_write_json(path, ...)` for data in memory;
- `with atomic_path(path) as tmp: writer(tmp)` for writers that take a path (CSV, PNG,
  `torch.save`, `np.savez`, `shutil.copy2`).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

TMP_MARK = ".tmp"  # every temporary name contains this (tests look for leftovers)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path in `path`'s folder; on a clean exit it replaces `path`.

    The folder is created when missing. On an exception the temporary file is removed and
    `path` is left as it was.
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=f"{TMP_MARK}{dest.suffix}", dir=dest.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding=encoding)


def atomic_write_json(path: str | Path, data: Any, indent: int | None = 1, **dumps: Any) -> None:
    """`json.dumps(data, indent=indent, **dumps)` written atomically (no conversion of the values)."""
    atomic_write_text(path, json.dumps(data, indent=indent, **dumps))
