"""Everything a deployed coordinator puts between its loopback SuperLink and the hospitals.

`open_gate` (once the SuperLink answers): announce the run in HOME/live.json, register the
registry's site keys with the SuperLink over loopback, start the nginx proxy on the public
address and wait until it answers /health over TLS. `Gate.tick()` (called by the console loop)
restarts a dead proxy and reports SuperNodes refused for an unregistered key; `Gate.close()`
stops the proxy and withdraws HOME/live.json.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from mammo_fl.common.federation.app_bundle import installed_app_sha256
from mammo_fl.common.federation.processes import parse_address, wait_healthy
from mammo_fl.server.console import say
from mammo_fl.server.home import CoordinatorHome
from mammo_fl.server.key_refusals import KeyRefusals
from mammo_fl.server.pki import certificate_names
from mammo_fl.server.proxy import Proxy, ProxySpec
from mammo_fl.server.site_links import LiveRun, clear_live, sync_site_keys, write_live
from mammo_fl.server.site_nodes import FILE_NAME
from mammo_fl.server.sites import load_registry

PROXY_HEALTH_TIMEOUT_S = 60.0


@dataclass
class Gate:
    home: CoordinatorHome
    proxy: Proxy
    refusals: KeyRefusals

    def tick(self) -> list[str]:
        restarted = self.proxy.supervise()
        return ([restarted] if restarted else []) + self.refusals.poll()

    def close(self) -> None:
        self.proxy.stop()
        clear_live(self.home, os.getpid())


def _warn_about_address(home: CoordinatorHome, address: str) -> None:
    host, _ = parse_address(address)
    names = certificate_names(home.server_pem)
    if host not in ("0.0.0.0", "::") and host not in names:
        say(f"warning: {host} is not in the server certificate ({', '.join(names)}); hospitals dialling it will "
            f"fail TLS: `mammo-server init --home {home.root} --host {host}` re-issues it")


def _probe_address(address: str) -> str:
    host, port = parse_address(address)
    return f"127.0.0.1:{port}" if host in ("0.0.0.0", "::") else address


def open_gate(home: CoordinatorHome, address: str, link: str, state: Path, proxy_dir: Path,
              env: dict[str, str]) -> Gate:
    """Register the site keys, start the proxy on `address` in front of the SuperLink at `link`."""
    _warn_about_address(home, address)
    live = LiveRun(pid=os.getpid(), flwr_home=str(state / "flwr-home"), site_nodes=str(state / FILE_NAME))
    refusals = KeyRefusals(state / "superlink.log")
    with home.lock():
        write_live(home, live)
        try:
            for note in sync_site_keys(home, live):
                say(note)
        except BaseException:
            clear_live(home, os.getpid())
            raise
    if not load_registry(home):
        say(f"warning: no sites registered in {home.root}: nobody can join "
            f"(`mammo-server sites add NAME NAME.pub --home {home.root}`, also while this runs)")
    _, link_port = parse_address(link)
    proxy = Proxy(ProxySpec(address, link_port, home.server_pem, home.server_key, home.ca_pem, proxy_dir), env)
    gate = Gate(home, proxy, refusals)
    try:
        proxy.start()
        wait_healthy(_probe_address(address), insecure=False, timeout_s=PROXY_HEALTH_TIMEOUT_S, proc=proxy.proc,
                     ca=home.ca_pem)
    except BaseException:
        gate.close()
        raise
    say(f"proxy (nginx) serves {address} over TLS: Fleet API and /health only; SuperLink on {link} (loopback)")
    say(f"app bundle sha256 {installed_app_sha256()} (approved by default at sites with this mammo-fl release)")
    return gate
