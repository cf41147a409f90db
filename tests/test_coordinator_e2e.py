"""One real loopback federation (mammo-server --dashboard + two mammo-clients) checked the way the
consortium sees it: /api/status lists the sites while the run goes on, a headless Chromium renders
the sites and the AUC curve and refreshes itself, and after the run final.pt carries the operating
point, metrics.csv has the operating-point columns and `mammo-server report` writes a report that
the browser renders with every site and the final pooled AUC of metrics.csv.

Two rounds, each held open by one site (test-fault hold) until the test has looked at the page;
MAMMO_DOCS_SCREENSHOTS=DIR saves the page's screenshot (round 2 in progress) there (how
docs/coordinator_page.png was made)."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
from browser_support import headless_chromium
from federation_support import BIN, E2E_TIMEOUT_S, FAST, make_checkpoint, make_sites, start_client, stop, wait_exit

from mammo_fl.common.federation.processes import _die_with_parent, free_port

pytestmark = pytest.mark.slow


DOCS = os.environ.get("MAMMO_DOCS_SCREENSHOTS")
ROUNDS = 2


def _start_server(model: Path, out: Path, address: str, dashboard: str, log: Path) -> subprocess.Popen:
    cmd = [str(BIN / "mammo-server"), "--model", str(model), "--rounds", str(ROUNDS), "--min-sites", "2",
           "--out", str(out),
           "--address", address, "--insecure", "--dashboard", dashboard]
    for item in [*FAST, "evaluate-initial=true", "round-timeout=1800"]:  # round 0: a first point on the curve early
        cmd += ["--set", item]
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "OMP_NUM_THREADS": "1"}
    with open(log, "ab") as fh:
        return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                preexec_fn=_die_with_parent)


def _status(url: str) -> dict | None:
    try:
        with urllib.request.urlopen(url + "api/status", timeout=30) as resp:
            return json.loads(resp.read())
    except OSError:
        return None


def _poll(what: str, check, proc: subprocess.Popen, timeout_s: float = 1500.0, every_s: float = 2.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        if proc.poll() is not None:
            raise AssertionError(f"mammo-server exited ({proc.returncode}) while waiting for {what}")
        time.sleep(every_s)
    raise AssertionError(f"timed out waiting for {what}")


def _page_shows(driver, sites: list[str], points: int = 0) -> dict | None:
    """Sites rendered by name and at least `points` points on the pooled AUC curve (None until then)."""
    shown = driver.execute_script(
        "return {sites: Array.from(document.querySelectorAll('tr.site')).map(r => r.dataset.site),"
        " points: document.querySelectorAll('#auc-chart g[data-series=pooled] circle').length,"
        " round: (document.querySelector('#progress h2') || {textContent: ''}).textContent.split(/\\s+/)[1],"
        " phase: (document.getElementById('phase') || {}).textContent}")
    return shown if set(sites) <= set(shown["sites"]) and shown["points"] >= points else None


@pytest.mark.timeout(E2E_TIMEOUT_S)
def test_live_page_and_report_of_a_real_run(tmp_path):
    sites = make_sites(tmp_path / "sites", sites=2, patients=20, seed=5)
    names = [s.name for s in sites]
    model = make_checkpoint(tmp_path / "init.pt")
    address, port = f"127.0.0.1:{free_port()}", free_port()
    url, out, log = f"http://127.0.0.1:{port}/", tmp_path / "run", tmp_path / "server.log"
    # The first site holds its round-r reply until the test creates hold/round-r: rounds take seconds
    # now, so the test keeps each one open until it has looked at the page.
    hold = tmp_path / "hold"
    hold.mkdir()
    clients = [start_client(s, address, tmp_path / f"{s.name}.log",
                            *(["--test-fault", f"hold:{hold}"] if i == 0 else [])) for i, s in enumerate(sites)]
    server = _start_server(model, out, address, f"127.0.0.1:{port}", log)
    try:
        with headless_chromium() as driver:
            # Round 1 (held open): the page shows it with both sites training; they are named by their
            # replies, and a site's first reply is its round-1 reply, so here they may still be node ids.
            _poll("round 1 with two sites in /api/status", lambda: (s := _status(url)) and s["round"] == 1
                  and len(s["sites"]) >= 2 and s["phase"] == "training", server)
            driver.get(url)
            first = _poll("the page to show round 1", lambda: (
                (now := _page_shows(driver, [])) and now["round"] == "1" and len(now["sites"]) >= 2 and now), server)
            # Round 2 (held open in turn): round 1's replies named the sites and scored the initial model,
            # so the JSON lists the sites by name and the page, which refreshes itself (no reload), shows
            # them and the first point of the curve.
            (hold / "round-1").touch()
            status = _poll("the sites by name in /api/status", lambda: (s := _status(url)) and s["round"] == ROUNDS
                           and set(names) <= {x["name"] for x in s["sites"]} and s, server)
            assert status["status"] == "running" and status["rounds"] == ROUNDS
            # "online" is Flower's node list, refreshed every 10 s in the background while the page is
            # watched (server/node_list.py): one snapshot may predate the sites' latest heartbeat
            _poll("both sites online in /api/status", lambda: (s := _status(url)) and all(
                x["online"] for x in s["sites"] if x["name"] in names), server, timeout_s=90.0)
            _poll("the page to refresh to round 2 with the curve", lambda: (
                (now := _page_shows(driver, names, points=1)) and now["round"] == str(ROUNDS)
                and (now["round"], now["phase"]) != (first["round"], first["phase"])), server)
            assert (_status(url) or {}).get("status") == "running", "the page must be checked during the run"
            shots = Path(DOCS or tmp_path)
            shots.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(shots / "coordinator_page.png"))
            (hold / "round-2").touch()
            assert wait_exit(server, 1500, log) == 0, log.read_text()[-3000:]

            table = pd.read_csv(out / "metrics.csv")
            assert list(table["round"]) == list(range(ROUNDS + 1))
            expected = {"threshold", "sens", "spec"} | {f"{m}_{n}" for m in ("sens", "spec", "auc") for n in names}
            assert expected <= set(table.columns)
            assert (table["spec"] >= 0.9).all()  # the default target, met on the pooled histograms
            from mammo_fl.common.models.checkpoint import read_checkpoint_meta

            point = read_checkpoint_meta(out / "final.pt")["metrics"]["operating_point"]
            assert point["threshold"] == pytest.approx(table["threshold"].iloc[-1]) and point["round"] == ROUNDS
            assert point["target"] == {"kind": "specificity", "value": 0.9}
            started = [json.loads(x) for x in (out / "events.jsonl").read_text().splitlines() if '"started"' in x]
            assert len(started[-1]["fab_hash"]) == 64  # Flower's FAB hash, recorded by the ServerApp
            assert json.loads((out / "launches.jsonl").read_text().splitlines()[-1])["app_sha256"]

            report = tmp_path / "report.html"
            subprocess.run([str(BIN / "mammo-server"), "report", str(out), "--out", str(report), "--bootstrap",
                            "500"], check=True, capture_output=True, timeout=600)
            driver.get(report.as_uri())
            rows = driver.execute_script("return Array.from(document.querySelectorAll('#sites tr.site'))"
                                         ".map(r => r.dataset.site)")
            assert sorted(rows) == sorted(names)
            final_auc = driver.find_element("id", "final-auc").text
            assert final_auc == f"{table['pooled_auc'].iloc[-1]:.4f}"
            widths = driver.execute_script("return Array.from(document.images).map(i => i.naturalWidth)")
            assert len(widths) == 2 and all(w > 0 for w in widths)  # embedded ROC and AUC plots render
    finally:
        stop(server)
        for c in clients:
            stop(c)
