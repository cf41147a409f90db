"""Starting and stopping Flower's daemons (SuperLink, SuperNode) from our wrappers.

Flower spawns its helpers (`flower-superexec`, `flwr-serverapp`, `flwr-clientapp`) by bare
name through PATH, installs runtime dependencies unless told not to, and phones home for
update checks: every child we start gets an environment that fixes all of that.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from mammo_fl.common.utils.errors import MammoError

VENV_BIN = Path(sys.executable).parent


def flower_env(flwr_home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for Flower daemons: venv first on PATH, private FLWR_HOME, no network side effects."""
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["FLWR_HOME"] = str(flwr_home)
    env["FLWR_DISABLE_UPDATE_CHECK"] = "1"
    env["FLWR_TELEMETRY_ENABLED"] = "0"
    env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.update(extra or {})
    return env


def flower_binary(name: str) -> str:
    """Absolute path of a Flower console script from this environment."""
    path = VENV_BIN / name
    if not path.exists():
        raise MammoError(f"{name} not found next to {sys.executable}; is flwr installed in this environment?")
    return str(path)


def _die_with_parent() -> None:
    """Child pre-exec: get SIGTERM when the wrapper dies, even by SIGKILL (Linux only)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def start_daemon(cmd: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen:
    """Start a Flower daemon with output appended to `log_path` (tracebacks stay out of the console)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "ab")  # noqa: SIM115 - kept open for the child's lifetime
    try:
        return subprocess.Popen(
            cmd,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
    finally:
        log.close()


def descendants(pid: int) -> list[int]:
    """All processes below `pid` (Linux /proc; empty elsewhere). Flower detaches some helpers
    into their own sessions, so killing a process group would miss them."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:  # a zombie is not alive
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def stop_daemon(proc: subprocess.Popen | None, grace_s: float = 10.0) -> None:
    """SIGTERM the daemon (graceful: a SuperNode deregisters itself) and every helper it spawned,
    then SIGKILL whatever is left after `grace_s`."""
    if proc is None:
        return
    tree = descendants(proc.pid)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    _signal_all([p for p in tree if _alive(p)], signal.SIGTERM)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and any(_alive(p) for p in tree):
        time.sleep(0.2)
    _signal_all([p for p in tree if _alive(p)], signal.SIGKILL)


def stop_stale_process(pid: int, name: str, grace_s: float = 10.0) -> bool:
    """SIGTERM (then SIGKILL) process `pid` if its command line contains `name`; True when it was stopped.

    Used for a Flower helper of a killed launch that outlived its parent."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    if name not in cmdline:
        return False
    _signal_all([pid], signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.2)
    _signal_all([pid] if _alive(pid) else [], signal.SIGKILL)
    return True


def parse_address(address: str) -> tuple[str, int]:
    """`host:port` -> (host, port) with a one-line error on nonsense."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise MammoError(f"address {address!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host if host not in ("0.0.0.0", "::") else "127.0.0.1", port)) == 0


class TlsRefused(MammoError):
    """The peer's certificate does not verify against the CA or name the dialled host."""


def _tls_context(ca: Path | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca) if ca is not None else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def probe_health(address: str, insecure: bool, timeout_s: float = 2.0, ca: Path | None = None) -> str | None:
    """None when the SuperLink (or its proxy) at `address` answers /health, else a short reason.

    Over TLS (`insecure` false) the certificate must verify against `ca` (the system store when
    None) and name the host; a certificate problem raises TlsRefused (retrying cannot fix it)."""
    host, port = parse_address(address)
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    scheme = "http" if insecure else "https"
    url = f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}/health"
    context = None if insecure else _tls_context(ca)
    try:
        with urllib.request.urlopen(url, timeout=timeout_s, context=context) as resp:  # noqa: S310 - fixed scheme
            return None if resp.status == 200 else f"HTTP {resp.status}"
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}"
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, ssl.SSLCertVerificationError):
            raise TlsRefused(f"TLS: the certificate of {address} does not verify against "
                             f"{ca or 'the system CA store'}: {reason.verify_message}") from None
        return getattr(reason, "strerror", None) or str(reason)
    except ssl.SSLCertVerificationError as exc:
        raise TlsRefused(f"TLS: the certificate of {address} does not verify against "
                         f"{ca or 'the system CA store'}: {exc.verify_message}") from None
    except (OSError, TimeoutError) as exc:
        return getattr(exc, "strerror", None) or type(exc).__name__


def wait_healthy(address: str, insecure: bool, timeout_s: float, proc: subprocess.Popen | None = None,
                 ca: Path | None = None) -> None:
    """Block until /health answers; fail early if the daemon `proc` died."""
    deadline = time.monotonic() + timeout_s
    reason = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise MammoError(f"Flower daemon exited with status {proc.returncode} before becoming healthy")
        reason = probe_health(address, insecure, ca=ca) or ""
        if not reason:
            return
        time.sleep(0.3)
    raise MammoError(f"SuperLink at {address} not healthy after {timeout_s:.0f} s ({reason})")


def toml_literal(value: str) -> str:
    """A TOML literal string ('...'): Windows backslashes survive; refuse the one char it cannot hold."""
    if "'" in value or "\n" in value:
        raise MammoError(f"value {value!r} cannot contain a quote or newline")
    return f"'{value}'"


def is_loopback(host: str) -> bool:
    """True for localhost / 127.0.0.0/8 / ::1 (the only hosts `--insecure` lab mode may use)."""
    import ipaddress

    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
