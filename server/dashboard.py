"""`mammo-server ... --dashboard 127.0.0.1:PORT`: the live coordinator page, read-only, in a thread.

Starlette (installed with Flower) under uvicorn serves, GET only:
  /             the page: sites (online, what each is doing), round progress, AUC curves, operating point
  /fragment     the page's live part, fetched by the page's small script every few seconds
  /api/status   the same state as JSON (server/run_status.py)
The state comes from the run folder and Flower's node list (server/node_list.py), never from the
round loop, so a slow or busy page cannot slow a round. Bound to loopback unless told otherwise.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mammo_fl.common.federation.processes import parse_address
from mammo_fl.common.utils.errors import ConfigError, MammoError
from mammo_fl.common.utils.jsonable import jsonable
from mammo_fl.server.html import TEMPLATE_DIR, render
from mammo_fl.server.node_list import FlowerNodes
from mammo_fl.server.run_status import RunReader
from mammo_fl.server.svg_chart import auc_chart, site_colors

REFRESH_S = 3
# The page loads nothing from elsewhere: its own script, inline styles and inline SVG only.
HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; "
                               "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'",
}


def page_context(status: dict[str, Any]) -> dict[str, Any]:
    """What the templates show: the status plus the latest evaluated model's figures and the chart.

    A model is evaluated one round after it was made (by the next round's messages, or the final
    evaluation), so the newest row usually has no AUC yet: the page shows the newest one that does."""
    history = status["history"]
    evaluated = [h for h in history if h.get("evaluated_by") or h.get("pooled_auc") is not None]
    latest = evaluated[-1] if evaluated else None
    charted = sorted({n for h in history for n in h["sites"]})
    colors = site_colors(charted + sorted({s["name"] for s in status["sites"]} - set(charted)))
    sites = [{**site, "color": colors.get(site["name"], "#999999"),
              "metrics": (latest or {}).get("sites", {}).get(site["name"], {})} for site in status["sites"]]
    rounds = status.get("rounds") or 0
    done = min(status.get("completed_rounds") or 0, rounds) if rounds else 0
    return {"s": status, "sites": sites, "latest": latest, "chart": auc_chart(history),
            "legend": {name: colors[name] for name in charted},
            "progress": round(100 * done / rounds) if rounds else 0, "op_rows": list(reversed(evaluated[-6:])),
            "now": time.time(), "refresh_s": REFRESH_S}


def create_app(root: Path, nodes: FlowerNodes | None = None) -> Any:
    """The ASGI app of the page for the run folder `root` (nodes: Flower's node list, optional)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
    from starlette.routing import Route

    reader = RunReader(root)

    def status() -> dict[str, Any]:
        return reader.status(nodes.snapshot() if nodes is not None else None)

    def secured(response: Response) -> Response:
        response.headers.update(HEADERS)
        return response

    # async handlers run one at a time on the server's event loop, so the reader needs no lock
    async def page(request: Request) -> Response:
        return secured(HTMLResponse(render("dashboard.html", **page_context(status()))))

    async def fragment(request: Request) -> Response:
        return secured(HTMLResponse(render("dashboard_live.html", **page_context(status()))))

    async def api_status(request: Request) -> Response:
        return secured(JSONResponse(jsonable(status())))

    async def script(request: Request) -> Response:
        return secured(FileResponse(TEMPLATE_DIR / "dashboard.js", media_type="text/javascript"))

    return Starlette(routes=[
        Route("/", page, methods=["GET"]),
        Route("/fragment", fragment, methods=["GET"]),
        Route("/api/status", api_status, methods=["GET"]),
        Route("/dashboard.js", script, methods=["GET"]),
    ])


def dashboard_address(text: str) -> tuple[str, int]:
    """`HOST:PORT`, or a bare `PORT` on 127.0.0.1."""
    return ("127.0.0.1", _port(text)) if text.strip().isdigit() else parse_address(text)


def _port(text: str) -> int:
    port = int(text)
    if not 0 < port < 65536:
        raise ConfigError(f"--dashboard port must be 1..65535, got {port}")
    return port


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _bind(host: str, port: int) -> socket.socket:
    """Bind here, in the caller's thread, so a taken port is a one-line error before the run starts."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
    except OSError as exc:
        raise MammoError(f"dashboard cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(64)
    sock.setblocking(False)
    return sock


@dataclass
class Dashboard:
    url: str
    server: Any
    thread: threading.Thread
    nodes: FlowerNodes | None
    loopback: bool = True

    def banner(self) -> str:
        text = f"coordinator page: {self.url} (read-only; JSON at {self.url}api/status)"
        if not self.loopback:
            text += "\nwarning: the coordinator page has no login; anyone who can reach this address can read it"
        return text

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        if self.nodes is not None:
            self.nodes.stop()


def start_dashboard(address: str, root: Path, flower_env: dict[str, str] | None = None,
                    timeout_s: float = 30.0) -> Dashboard:
    """Serve the page for `root` on `address` from a daemon thread; `flower_env` enables the node list."""
    import uvicorn

    host, port = dashboard_address(address)
    sock = _bind(host, port)
    nodes = FlowerNodes(flower_env).start() if flower_env is not None else None
    config = uvicorn.Config(create_app(root, nodes), log_level="warning", access_log=False, lifespan="off",
                            ws="none")  # no websockets: plain GETs only
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="dashboard", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise MammoError(f"dashboard did not start on {host}:{port}")
        time.sleep(0.05)
    shown = f"[{host}]" if ":" in host else host
    return Dashboard(f"http://{shown}:{port}/", server, thread, nodes, loopback=is_loopback(host))
