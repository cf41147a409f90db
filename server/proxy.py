"""The public door of a deployed coordinator: nginx in front of the loopback SuperLink.

Flower 1.42 serves its Fleet (hospitals), Control (start runs, register keys) and Runtime
(ServerApp) APIs on one port without authenticating the last two. The SuperLink therefore
listens on 127.0.0.1 only, and nginx (Debian's package, configured, started and supervised by
`mammo-server`) serves `--address` with the coordinator's certificate and forwards exactly two
things: `POST /v1/fleet/*` (SuperNode authentication travels as signed request headers, which
nginx passes on untouched) and `GET /health`. Everything else gets 403/404 from nginx itself;
plain HTTP on the TLS port gets 400. nginx re-encrypts to the SuperLink and verifies its
certificate against the project CA. The request path is passed on normalised (proxy_pass with
a URI part), so no `..` or percent-encoding can turn a Fleet path into another API's path.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from mammo_fl.common.federation.processes import parse_address, port_in_use, start_daemon, stop_daemon
from mammo_fl.common.utils.errors import MammoError

INSTALL_HINT = ("nginx not found: install it (Debian/Ubuntu: `apt-get install nginx`, Fedora/RHEL: `dnf install "
                "nginx`, macOS: `brew install nginx`) or put it on PATH")
# Flower pushes arrays in 5 MiB chunks (plus protobuf framing); 64 MiB leaves room for larger settings.
MAX_BODY = "64m"
RESTART_BACKOFF_S = (1.0, 2.0, 5.0, 10.0)


def find_nginx(search_path: str | None = None, fallback: Path = Path("/usr/sbin/nginx")) -> str:
    """The nginx binary (PATH, then /usr/sbin where Debian puts it), else a one-line install hint."""
    found = shutil.which("nginx", path=search_path) or (str(fallback) if fallback.is_file() else None)
    if found is None:
        raise MammoError(INSTALL_HINT)
    return found


@dataclass(frozen=True)
class ProxySpec:
    public_address: str  # HOST:PORT hospitals dial
    upstream_port: int  # the SuperLink on 127.0.0.1
    cert: Path
    key: Path
    ca: Path  # verifies the SuperLink's certificate (same CA)
    workdir: Path  # config, pid, logs, temp files


def _listen(address: str) -> str:
    host, port = parse_address(address)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def render_config(spec: ProxySpec) -> str:
    """The whole nginx.conf: only the Fleet API and the health check reach the SuperLink."""
    w = spec.workdir.resolve()
    return f"""# Written by mammo-server for this launch (server/proxy.py); edits are overwritten.
worker_processes 1;
daemon off;
pid {w}/nginx.pid;
error_log {w}/error.log warn;
events {{ worker_connections 512; }}
http {{
  access_log {w}/access.log;
  client_body_temp_path {w}/tmp/body;
  proxy_temp_path {w}/tmp/proxy;
  fastcgi_temp_path {w}/tmp/fastcgi;
  uwsgi_temp_path {w}/tmp/uwsgi;
  scgi_temp_path {w}/tmp/scgi;
  server_tokens off;
  upstream superlink {{ server 127.0.0.1:{spec.upstream_port}; keepalive 8; }}
  server {{
    listen {_listen(spec.public_address)} ssl;
    ssl_certificate {spec.cert.resolve()};
    ssl_certificate_key {spec.key.resolve()};
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_prefer_server_ciphers on;
    ssl_session_cache shared:mammo:1m;
    client_max_body_size {MAX_BODY};
    client_body_timeout 120s;
    # stream Flower's array chunks instead of spooling them to disk
    proxy_request_buffering off;
    proxy_buffering off;
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_read_timeout 300s;
    proxy_send_timeout 300s;
    proxy_ssl_verify on;
    proxy_ssl_verify_depth 2;
    proxy_ssl_trusted_certificate {spec.ca.resolve()};
    proxy_ssl_name localhost;
    proxy_ssl_server_name on;
    proxy_ssl_protocols TLSv1.2 TLSv1.3;
    proxy_ssl_session_reuse on;
    location /v1/fleet/ {{
      limit_except POST {{ deny all; }}
      proxy_pass https://superlink/v1/fleet/;
    }}
    location = /health {{
      limit_except GET {{ deny all; }}
      proxy_pass https://superlink/health;
    }}
    location / {{ return 404; }}
  }}
}}
"""


@dataclass
class Proxy:
    """nginx in the foreground as our child; restarted with back-off if it dies."""

    spec: ProxySpec
    env: dict[str, str]
    binary: str = field(default_factory=find_nginx)
    proc: subprocess.Popen | None = None
    restarts: int = 0
    _next_try: float = 0.0

    @property
    def conf(self) -> Path:
        return self.spec.workdir / "nginx.conf"

    def _command(self) -> list[str]:
        w = str(self.spec.workdir.resolve())
        return [self.binary, "-e", f"{w}/error.log", "-p", w, "-c", str(self.conf.resolve())]

    def start(self) -> None:
        (self.spec.workdir / "tmp").mkdir(parents=True, exist_ok=True)
        self.conf.write_text(render_config(self.spec), encoding="utf-8")
        host, port = parse_address(self.spec.public_address)
        if port_in_use(host, port):
            raise MammoError(f"address {self.spec.public_address} is already in use (another mammo-server?)")
        check = subprocess.run([*self._command(), "-t"], capture_output=True, text=True, env=self.env)
        if check.returncode != 0:
            lines = [ln for ln in check.stderr.splitlines() if "emerg" in ln or "error" in ln.lower()]
            raise MammoError(f"nginx refused its configuration: {(lines or check.stderr.splitlines() or ['?'])[-1]}")
        self.proc = start_daemon(self._command(), self.env, self.spec.workdir / "nginx.out")

    def supervise(self) -> str | None:
        """Call often: restarts a dead nginx (with back-off); returns a line to print when it did."""
        if self.proc is None or self.proc.poll() is None or time.monotonic() < self._next_try:
            return None
        code = self.proc.returncode
        delay = RESTART_BACKOFF_S[min(self.restarts, len(RESTART_BACKOFF_S) - 1)]
        self.restarts += 1
        self._next_try = time.monotonic() + delay
        self.proc = start_daemon(self._command(), self.env, self.spec.workdir / "nginx.out")
        return f"  ! proxy (nginx) exited with status {code}; restarted (details: {self.spec.workdir / 'error.log'})"

    def stop(self) -> None:
        stop_daemon(self.proc, grace_s=5)
        self.proc = None
