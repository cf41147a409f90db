"""A deployed federation on loopback, as hospitals and a coordinator would run it: real
`mammo-server --home` (TLS SuperLink on loopback + nginx on the public port + SuperNode
authentication) and real `mammo-client --ca --key` processes on synthetic DICOM sites.

One federation serves every test of this module (CPU time is scarce). Its cast:
- site-1, site-2: registered, honest (site-2 keeps the default minimum of 3 validation
  patients per class, so it is too small to evaluate; site-1 lowered it to 1 in its config);
- site-3's key is registered, but that hospital calls itself "site-1" (an impostor);
- site-4's key was never registered (a stranger);
- site-5 is registered but withdrew its approval of the release's app bundle.
While the run goes, the fixture probes the public port (Control/Runtime API, plain HTTP,
path tricks) and registers another site with `mammo-server sites add`.
"""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
from federation_support import (
    BIN,
    E2E_TIMEOUT_S,
    FAST,
    make_checkpoint,
    make_sites,
    start_client,
    start_server,
    stop,
    wait_exit,
    wait_for,
)

from mammo_fl.client.audit import read_entries
from mammo_fl.common.federation.app_bundle import installed_app_sha256
from mammo_fl.common.federation.processes import free_port
from mammo_fl.common.federation.site_keys import fingerprint, load_public_key

pytestmark = pytest.mark.slow


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / args[0]), *args[1:]], capture_output=True, text=True, timeout=300)


def _request(url: str, method: str, ca: Path | None) -> int | str:
    """HTTP status of one request (or the error's name when no HTTP answer came)."""
    req = urllib.request.Request(url, data=b"" if method == "POST" else None, method=method,
                                 headers={"Content-Type": "application/protobuf"})
    ctx = ssl.create_default_context(cafile=str(ca)) if ca else None
    try:
        with urllib.request.urlopen(req, timeout=20, context=ctx) as resp:  # noqa: S310 - test URLs
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError) as exc:
        return type(getattr(exc, "reason", exc)).__name__


def _non_loopback_ip() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))  # no packet is sent; picks the outgoing interface
            ip = s.getsockname()[0]
        except OSError:
            return None
    return None if ip.startswith("127.") else ip


def _probe_public_port(address: str, ca: Path) -> dict[str, int | str]:
    base = f"https://{address}"
    return {
        "control": _request(f"{base}/v1/control/list-runs", "POST", ca),
        "runtime": _request(f"{base}/v1/runtime/acquire-task", "POST", ca),
        "dotdot": _request(f"{base}/v1/fleet/%2e%2e/control/list-runs", "POST", ca),
        "fleet-get": _request(f"{base}/v1/fleet/pull-messages", "GET", ca),
        "fleet-unauthenticated": _request(f"{base}/v1/fleet/get-run", "POST", ca),
        "health": _request(f"{base}/health", "GET", ca),
        "plain-http": _request(f"http://{address}/health", "GET", None),
    }


def _superlink_port(server_log: Path) -> int:
    for line in server_log.read_text().splitlines():
        if "SuperLink on 127.0.0.1:" in line:
            return int(line.split("SuperLink on 127.0.0.1:")[1].split()[0])
    raise AssertionError("the coordinator did not say where its SuperLink listens")


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    root = tmp_path_factory.mktemp("deployed")
    data = make_sites(root / "sites", sites=3, patients=24)
    model = make_checkpoint(root / "init.pt")
    home, keys = root / "home", root / "keys"
    assert _cli("mammo-server", "init", "--home", str(home), "--host", "127.0.0.1").returncode == 0
    for i in range(1, 7):
        assert _cli("mammo-client", "keygen", "--site", f"site-{i}", "--out", str(keys)).returncode == 0
    for i in (1, 2, 3, 5):
        added = _cli("mammo-server", "sites", "add", f"site-{i}", str(keys / f"site-{i}.pub"), "--home", str(home))
        assert added.returncode == 0, added.stderr
    (root / "site-1.toml").write_text("min-patients-per-class = 1\n")
    (root / "site-5.toml").write_text("approve-installed-app = false\n")

    address = f"127.0.0.1:{free_port()}"
    out, server_log = root / "run", root / "server.log"
    settings = FAST + ["start-sites=4", "site-wait-timeout=900"]
    server = start_server(model, out, address, rounds=1, min_sites=2, log=server_log, settings=settings,
                          security=("--home", str(home)))

    def client(key: str, data_dir: Path, name: str, config: Path | None = None):
        log = root / f"{key}.client.log"
        security = ("--ca", str(home / "ca.pem"), "--key", str(keys / f"{key}.key"))
        proc = start_client(data_dir, address, log, "--state-dir", str(root / "state" / key), name=name,
                            security=security, config=config)
        return proc, log

    cast = {
        "site-1": client("site-1", data[0], "site-1", root / "site-1.toml"),
        "site-2": client("site-2", data[1], "site-2"),  # the default policy: too small to evaluate
        "site-3": client("site-3", data[2], "site-1"),  # impostor: calls itself site-1
        "site-4": client("site-4", data[2], "site-4"),  # stranger: key never registered
        "site-5": client("site-5", data[2], "site-5", root / "site-5.toml"),
    }
    try:
        wait_for(lambda: "proxy (nginx) serves" in server_log.read_text(), 600, "the proxy", proc=server)
        probes = _probe_public_port(address, home / "ca.pem")
        link_port = _superlink_port(server_log)
        outside_ip = _non_loopback_ip()
        probes["superlink-outside"] = (_request(f"https://{outside_ip}:{link_port}/health", "GET", None)
                                       if outside_ip else "no non-loopback interface")
        # The stranger is refused on both sides; then it stops knocking (CPU is scarce).
        stranger_log = cast["site-4"][1]
        wait_for(lambda: "refused: the coordinator refused this site's key" in stranger_log.read_text()
                 and "whose key is not registered" in server_log.read_text(), 600, "the stranger's refusal",
                 proc=server)
        stop(cast["site-4"][0])
        late = _cli("mammo-server", "sites", "add", "site-6", str(keys / "site-6.pub"), "--home", str(home))
        listed = _cli("mammo-server", "sites", "list", "--home", str(home))
        rc = wait_exit(server, 1500, server_log)
        time.sleep(2)  # the clients' last console lines
        yield {"root": root, "home": home, "keys": keys, "out": out, "rc": rc, "server_log": server_log,
               "probes": probes, "late": late, "listed": listed, "cast": cast}
    finally:
        stop(server)
        for proc, _ in cast.values():
            stop(proc)


@pytest.mark.timeout(E2E_TIMEOUT_S)
def test_tls_run_with_two_registered_sites_completes(deployed):
    log = deployed["server_log"].read_text()
    assert deployed["rc"] == 0, log[-3000:]
    table = pd.read_csv(deployed["out"] / "metrics.csv")
    assert list(table["round"]) == [1] and list(table["site_names"]) == ["site-1,site-2"]
    assert (deployed["out"] / "final.pt").exists() and "auc_site-1" in table.columns
    for site in ("site-1", "site-2"):
        entries = [e for e in read_entries(deployed["root"] / "state" / site) if e["kind"] == "train"]
        assert entries and all(e["status"] == "ok" and e["app_sha256"] == installed_app_sha256() for e in entries)
    assert not (deployed["home"] / "live.json").exists()  # the coordinator withdrew its live record


@pytest.mark.timeout(E2E_TIMEOUT_S)
def test_public_port_serves_only_the_fleet_api(deployed):
    probes = deployed["probes"]
    assert probes["control"] in (403, 404) and probes["runtime"] in (403, 404), probes
    assert probes["dotdot"] in (403, 404) and probes["fleet-get"] in (403, 404), probes
    assert probes["fleet-unauthenticated"] == 401, probes  # reached the SuperLink, which wants a node signature
    assert probes["health"] == 200 and probes["plain-http"] not in (200,), probes
    assert probes["superlink-outside"] != 200, probes  # the SuperLink itself is on loopback only


@pytest.mark.timeout(E2E_TIMEOUT_S)
def test_unregistered_key_is_refused_on_both_sides(deployed):
    stranger = fingerprint(load_public_key(deployed["keys"] / "site-4.pub"))
    assert f"refused a SuperNode whose key is not registered ({stranger})" in deployed["server_log"].read_text()
    site_console = deployed["cast"]["site-4"][1].read_text()
    assert "refused: the coordinator refused this site's key" in site_console
    assert not read_entries(deployed["root"] / "state" / "site-4")  # it never received work


@pytest.mark.timeout(E2E_TIMEOUT_S)
def test_registered_key_claiming_another_name_is_refused_on_both_sides(deployed):
    log = deployed["server_log"].read_text()
    assert "site-3: refused: answered as 'site-1', but its key is registered as 'site-3'" in log
    site_console = deployed["cast"]["site-3"][1].read_text()
    assert "failed [site-name-mismatch]" in site_console and "registered as 'site-3'" in site_console
    entries = read_entries(deployed["root"] / "state" / "site-3")
    assert entries and all(e["status"] == "error" and e["sent"]["weights_sha256"] is None for e in entries)


@pytest.mark.timeout(E2E_TIMEOUT_S)
def test_unapproved_app_bundle_is_refused_at_the_site_and_reported(deployed):
    sha = installed_app_sha256()
    assert f"site-5: refused app {sha}" in deployed["server_log"].read_text()
    assert f"refused app bundle {sha}" in deployed["cast"]["site-5"][1].read_text()
    entries = read_entries(deployed["root"] / "state" / "site-5")
    assert entries and all(e["status"] == "refused-app" and e["app_sha256"] == sha for e in entries)
    apps = deployed["root"] / "state" / "site-5" / "flwr-home" / "apps"
    assert not apps.exists() or not any(apps.iterdir())  # nothing of the bundle was unpacked


@pytest.mark.timeout(E2E_TIMEOUT_S)
def test_small_site_sends_no_histogram(deployed):
    log = deployed["server_log"].read_text()
    assert "round 1 evaluate: site-2: too small to evaluate" in log
    table = pd.read_csv(deployed["out"] / "metrics.csv")
    assert "auc_site-2" not in table.columns
    evaluated = [e for e in read_entries(deployed["root"] / "state" / "site-2") if e["kind"] == "evaluate"]
    assert evaluated and all(e["status"] == "error" and not e["sent"]["eval"] and not e["sent"]["metrics"]
                             for e in evaluated)


@pytest.mark.timeout(E2E_TIMEOUT_S)
def test_sites_can_be_added_while_a_run_is_going(deployed):
    late, listed = deployed["late"], deployed["listed"]
    assert late.returncode == 0, late.stderr
    assert "running coordinator: site site-6: key" in late.stdout and "registered (node" in late.stdout
    assert "site-6" in listed.stdout and "node " in listed.stdout
    nodes = json.loads((deployed["out"] / ".superlink" / "site_nodes.json").read_text())
    assert sorted(nodes.values()) == ["site-1", "site-2", "site-3", "site-5", "site-6"]
