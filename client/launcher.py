"""A pre-started `flwr-clientapp`: Flower's per-message process without the cold start.

Flower's SuperExec starts `flwr-clientapp --runtime-api-address ... --token ...` by bare name
through PATH for every message, and each start re-imports Flower (seconds; minutes on an
overloaded machine, long enough for the task token to expire). mammo-client puts a tiny shim of
that name first on its SuperNode's PATH (`write_shim`). The shim (stdlib only, `python -IS`)
passes its arguments and its stdin/stdout/stderr to this launcher over a Unix socket (0600); the
launcher, which imported Flower and the ClientApp once and runs no threads, forks, and the child
runs Flower's own `flwr-clientapp` entry point with those arguments — the same code path, the
same token, the same Runtime API — behind the site's app guard (client/app_guard.py), installed
once in the launcher. The shim waits for the child's exit status and returns it, and forwards
SIGTERM/SIGINT to it. If the launcher is not running the shim execs the app guard script (a cold
`flwr-clientapp` behind the same guard), so a site always works and never without its guard. The
SuperNode's task-token grace (client/supernode_launch.py) applies to either path. The heavy work
is not here either: it is in the site worker (client/worker.py).

    python -m mammo_fl.client.launcher --socket STATE/launcher.sock --parent PID
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import struct
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

from mammo_fl.client.channel import listen, peer_is_same_user, serve_main
from mammo_fl.common.utils.atomic import atomic_path

SHIM_NAME = "flwr-clientapp"  # the command Flower's SuperExec runs per message (flower_private.CLIENTAPP_COMMAND)
_HEADER = struct.Struct("!I")

SHIM = '''#!{python} -IS
# Written by mammo-client: hands this Flower task to the site's pre-started ClientApp launcher
# (mammo_fl/client/launcher.py); runs the app guard's flwr-clientapp when the launcher is not there.
import os, signal, socket, struct, sys, json
SOCKET, REAL = {socket!r}, {real!r}
try:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(SOCKET)
    body = json.dumps({{"argv": sys.argv[1:]}}).encode()
    socket.send_fds(s, [struct.pack("!I", len(body)) + body], [0, 1, 2])
    f = s.makefile("rb")
    started = f.readline().split()
except OSError:
    started = []
if len(started) != 2 or started[0] != b"pid":
    os.execv(REAL, [REAL] + sys.argv[1:])
pid = int(started[1])
def forward(sig, frame):
    try:
        os.kill(pid, sig)
    except OSError:
        pass
signal.signal(signal.SIGTERM, forward)
signal.signal(signal.SIGINT, forward)
done = f.readline().split()
sys.exit(int(done[1]) if len(done) == 2 and done[0] == b"exit" else 1)
'''


def write_shim(bin_dir: Path, launcher_socket: Path, fallback: str) -> Path:
    """The `flwr-clientapp` shim in `bin_dir` (put that dir first on the SuperNode's PATH).

    `fallback` runs a task when the launcher is not there: mammo-client passes the app guard
    script (client/app_guard.py), so no path around the guard exists."""
    path = bin_dir / SHIM_NAME
    with atomic_path(path) as tmp:
        tmp.write_text(SHIM.format(python=sys.executable, socket=str(launcher_socket), real=fallback))
        tmp.chmod(0o700)
    return path


def warm_up() -> Callable[[], None]:
    """Import what a ClientApp task needs, once, and put the app guard in front of it.

    The forked children inherit the guard (client/app_guard.py: an app bundle the site has not
    approved is refused before Flower unpacks it), exactly as a cold `flwr-clientapp` started
    through the guard script would; the policy code and the installed release's bundle hash are
    loaded here, so a task pays for neither."""
    import mammo_fl.client.app  # noqa: F401 - load_app finds it in sys.modules
    from mammo_fl.client.app_guard import check_bundle, preload_policy
    from mammo_fl.common.federation.flower_private import check_flower_version, guard_app_bundles, run_flwr_clientapp

    check_flower_version()
    preload_policy()
    guard_app_bundles(check_bundle)
    return run_flwr_clientapp


def _read_request(conn: socket.socket) -> tuple[list[str], list[int]]:
    data, fds, _flags, _addr = socket.recv_fds(conn, 1 << 16, 3)
    data = bytearray(data)
    while len(data) < _HEADER.size:
        more = conn.recv(1 << 16)
        if not more:
            raise OSError("short request")
        data += more
    (n,) = _HEADER.unpack(data[:_HEADER.size])
    while len(data) < _HEADER.size + n:
        more = conn.recv(1 << 16)
        if not more:
            raise OSError("short request")
        data += more
    request = json.loads(bytes(data[_HEADER.size:_HEADER.size + n]))
    return [str(a) for a in request["argv"]], list(fds)


def _run_child(entry: Callable[[], None], argv: list[str], fds: list[int]) -> None:
    """In the forked child: become `flwr-clientapp argv...` on the shim's stdio; never returns."""
    code = 1
    try:
        for target, fd in zip((0, 1, 2), fds, strict=False):
            os.dup2(fd, target)
        for fd in fds:
            os.close(fd)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        sys.argv = [SHIM_NAME, *argv]
        try:
            entry()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - report and exit; the parent reports the status
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)


def serve(path: Path, parent: int) -> None:
    server = listen(path)  # before the warm-up: a task arriving meanwhile waits instead of starting cold
    entry = warm_up()
    sel = selectors.DefaultSelector()
    sel.register(server, selectors.EVENT_READ)
    children: dict[int, socket.socket] = {}
    print(f"clientapp launcher {os.getpid()} listening on {path}", flush=True)
    try:
        while not parent or os.getppid() == parent:
            for _key, _ in sel.select(timeout=0.1):
                conn, _ = server.accept()
                try:
                    if not peer_is_same_user(conn):
                        raise OSError("peer is another user")
                    argv, fds = _read_request(conn)
                except (OSError, ValueError, KeyError):
                    conn.close()
                    continue
                sys.stdout.flush()
                sys.stderr.flush()
                pid = os.fork()
                if pid == 0:
                    sel.close()
                    server.close()
                    conn.close()
                    for other in children.values():
                        other.close()
                    _run_child(entry, argv, fds)
                for fd in fds:
                    os.close(fd)
                children[pid] = conn
                _tell(conn, f"pid {pid}\n")
            _reap(children)
    finally:
        server.close()
        path.unlink(missing_ok=True)


def _tell(conn: socket.socket, line: str) -> None:
    try:
        conn.sendall(line.encode())
    except OSError:
        pass  # the shim is gone; its child still reports to Flower itself


def _reap(children: dict[int, socket.socket]) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = children.pop(pid, None)
        if conn is not None:
            _tell(conn, f"exit {os.waitstatus_to_exitcode(status) & 0xFF}\n")
            conn.close()


def main(argv: list[str] | None = None) -> int:
    return serve_main("mammo-fl clientapp launcher", __doc__.splitlines()[0], serve, argv)


if __name__ == "__main__":
    sys.exit(main())
