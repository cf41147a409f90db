"""`mammo-server init` and `mammo-server sites add|list|remove`: the coordinator's PKI and site registry.

    mammo-server init --home HOME --host coord.example.org [--host 10.0.0.5 ...]
    mammo-server sites add NAME NAME.pub --home HOME
    mammo-server sites list --home HOME
    mammo-server sites remove NAME --home HOME

`sites add|remove` work whether or not a run is going: with a running coordinator (HOME/live.json)
the key is also registered with / unregistered from its SuperLink over loopback at once.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mammo_fl.common.utils.errors import ConfigError
from mammo_fl.server.console import say
from mammo_fl.server.home import CoordinatorHome
from mammo_fl.server.pki import init_pki
from mammo_fl.server.site_links import read_live, sync_site_keys
from mammo_fl.server.sites import add_site, load_registry, remove_site


def build_init_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mammo-server init",
                                description="Create the federation CA and the coordinator's TLS certificate.")
    p.add_argument("--home", required=True, type=Path, help="coordinator home folder (keys, certificates, sites)")
    p.add_argument("--host", required=True, action="append", default=[],
                   help="a name or IP address hospitals dial (repeatable); localhost/127.0.0.1 are always added")
    return p


def build_sites_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mammo-server sites", description="Register the sites allowed to join.")
    sub = p.add_subparsers(dest="action", required=True)
    add = sub.add_parser("add", help="register a site's public key (NAME.pub from `mammo-client keygen`)")
    add.add_argument("name")
    add.add_argument("pub", type=Path)
    remove = sub.add_parser("remove", help="unregister a site (a running SuperLink disconnects it)")
    remove.add_argument("name")
    sub.add_parser("list", help="registered sites")
    for sp in (add, remove, sub.choices["list"]):
        sp.add_argument("--home", required=True, type=Path, help="coordinator home folder")
    return p


def init_home(args: argparse.Namespace) -> int:
    home = CoordinatorHome(args.home)
    with home.lock():
        names = init_pki(home.ca_key, home.ca_pem, home.server_key, home.server_pem, args.host)
    say(f"CA certificate: {home.ca_pem}  <- give this file to every hospital (`mammo-client --ca`)")
    say(f"server certificate: {home.server_pem} for {', '.join(names)} (keys 0600: {home.ca_key}, {home.server_key})")
    say(f"next: `mammo-server sites add NAME NAME.pub --home {home.root}` for each hospital's public key")
    return 0


def _sync_live(home: CoordinatorHome) -> None:
    live = read_live(home)
    if live is None:
        return
    for note in sync_site_keys(home, live):
        say(f"running coordinator: {note}")


def sites_command(args: argparse.Namespace) -> int:
    home = CoordinatorHome(args.home).check_initialised()
    if args.action == "list":
        return list_sites(home)
    with home.lock():
        if args.action == "add":
            entry = add_site(home, args.name, args.pub)
            say(f"site {entry.name} registered ({entry.fingerprint})")
        else:
            entry = remove_site(home, args.name)
            say(f"site {entry.name} removed ({entry.fingerprint})")
        _sync_live(home)
    return 0


def list_sites(home: CoordinatorHome) -> int:
    sites = load_registry(home)
    live = read_live(home)
    nodes: dict[str, str] = {}
    if live is not None and live.records_file.exists():
        for node, rec in json.loads(live.records_file.read_text(encoding="utf-8")).items():
            nodes[rec["site"]] = node
    if not sites:
        say(f"no sites registered in {home.root}")
        return 0
    for name, entry in sorted(sites.items()):
        where = f"  node {nodes[name]}" if name in nodes else ""
        say(f"{name:<24} {entry.fingerprint}  added {entry.added}{where}")
    return 0


def run_admin(argv: list[str]) -> int:
    """Dispatch `init` / `sites ...` (argv starts with the subcommand)."""
    if argv[0] == "init":
        return init_home(build_init_parser().parse_args(argv[1:]))
    if argv[0] == "sites":
        return sites_command(build_sites_parser().parse_args(argv[1:]))
    raise ConfigError(f"unknown command {argv[0]!r}")
