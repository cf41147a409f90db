"""The local channel between a site's per-message ClientApp process and its long-lived worker.

A Unix socket in the site's state dir, created with owner-only permissions (0600); the worker
also checks the peer's user id (SO_PEERCRED). Nothing listens on the network. One request per
connection: a JSON header frame, then the raw bytes of each numpy array it lists (no pickle).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import struct
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mammo_fl.common.utils.errors import MammoError

_LEN = struct.Struct("!Q")
MAX_HEADER = 64 * 2**20
# AF_UNIX paths are limited to 107 bytes on Linux; longer state dirs get a private short dir.
MAX_SOCKET_PATH = 100


class ChannelError(MammoError):
    """The worker could not be reached or hung up."""


def _send_frame(sock: socket.socket, data: bytes | memoryview) -> None:
    sock.sendall(_LEN.pack(len(data)))
    if len(data):
        sock.sendall(data)


def _recv_exact(sock: socket.socket, n: int) -> bytearray:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], min(n - got, 1 << 22))
        if k == 0:
            raise ChannelError("the site worker hung up")
        got += k
    return buf


def _recv_frame(sock: socket.socket, limit: int | None = None) -> bytearray:
    (n,) = _LEN.unpack(_recv_exact(sock, _LEN.size))
    if limit is not None and n > limit:
        raise ChannelError(f"frame of {n} bytes exceeds {limit}")
    return _recv_exact(sock, n)


def send(sock: socket.socket, header: Mapping[str, Any], arrays: Mapping[str, np.ndarray] | None = None) -> None:
    """Header (JSON) + the arrays' raw bytes; the header records their names, dtypes and shapes."""
    arrays = dict(arrays or {})
    specs = [[k, str(a.dtype), list(a.shape)] for k, a in arrays.items()]
    _send_frame(sock, json.dumps({**header, "_arrays": specs}).encode())
    for a in arrays.values():
        flat = np.ascontiguousarray(a).reshape(-1)
        _send_frame(sock, flat.view(np.uint8).data if flat.size else b"")


def receive(sock: socket.socket) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    header = json.loads(bytes(_recv_frame(sock, MAX_HEADER)))
    arrays = {}
    for name, dtype, shape in header.pop("_arrays", []):
        raw = _recv_frame(sock)
        arrays[name] = np.frombuffer(raw, dtype=np.dtype(dtype)).reshape(shape)
    return header, arrays


def socket_path(state_dir: Path, name: str = "worker.sock") -> Path:
    """Where a site's helper listens: STATE/NAME, or a private temp dir when that path is too long."""
    path = Path(state_dir).resolve() / name
    if len(str(path)) <= MAX_SOCKET_PATH:
        return path
    import tempfile

    return Path(tempfile.mkdtemp(prefix="mammo-site-")) / name  # mkdtemp: mode 0700


def listen(path: Path) -> socket.socket:
    """A listening Unix socket only this user can connect to (stale socket files are replaced)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)  # the socket file is created 0600
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(4)
    return sock


def peer_is_same_user(conn: socket.socket) -> bool:
    """SO_PEERCRED (Linux): the connecting process runs as this user."""
    if not hasattr(socket, "SO_PEERCRED"):
        return True
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid == os.getuid()


def call(path: Path, header: Mapping[str, Any], arrays: Mapping[str, np.ndarray] | None = None,
         connect_timeout_s: float = 30.0) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """One request to the worker; blocks until it answers (training can take long)."""
    import time

    deadline = time.monotonic() + connect_timeout_s
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(path))
            break
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            sock.close()
            if time.monotonic() >= deadline:
                raise ChannelError(f"site worker not reachable ({type(exc).__name__})") from None
            time.sleep(0.2)
    with sock:
        send(sock, header, arrays)
        return receive(sock)


def serve_main(prog: str, description: str, serve: Callable[[Path, int], None], argv: list[str] | None = None) -> int:
    """Entry point of a process serving this channel (`--socket PATH --parent PID`): exits on SIGTERM
    or when `mammo-client` (the parent) is gone, so it never outlives the site."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--socket", required=True, type=Path)
    p.add_argument("--parent", type=int, default=0, help="exit when this process (mammo-client) is gone")
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    serve(args.socket, args.parent)
    return 0
