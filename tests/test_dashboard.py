"""The coordinator page on a run folder written as the round loop writes it (no Flower): /api/status,
the rendered page, GET only, Flower's node list, binding. The real-browser check during a real
loopback federation is in test_coordinator_e2e.py (slow)."""

from __future__ import annotations

import json
import socket
import urllib.request

import pytest
from run_fixtures import NODES, SITES, make_run

from mammo_fl.common.utils.errors import MammoError
from mammo_fl.server.dashboard import create_app, dashboard_address, start_dashboard
from mammo_fl.server.node_list import parse_node_list
from mammo_fl.server.run_status import RunReader


class FakeNodes:
    def __init__(self, nodes):
        self.nodes = nodes

    def snapshot(self):
        return self.nodes


@pytest.fixture()
def client_for():
    from starlette.testclient import TestClient

    def make(root, nodes=None):
        return TestClient(create_app(root, FakeNodes(nodes) if nodes is not None else None))

    return make


def test_api_status_lists_sites_progress_and_history(tmp_path, client_for):
    make_run(tmp_path, rounds=3, finished=False)
    status = client_for(tmp_path).get("/api/status").json()
    assert {"run", "round", "rounds", "phase", "sites", "history"} <= set(status)
    assert (status["round"], status["rounds"], status["completed_rounds"]) == (3, 3, 3)
    named = {s["name"]: s for s in status["sites"]}
    assert set(SITES) <= set(named)
    for site in named.values():
        assert {"name", "online", "last_seen", "state", "examples"} <= set(site)
    assert named["hospital-a"]["examples"] == 40 and named["hospital-a"]["state"] == "evaluated round 3"
    assert named["node-404"]["online"] is False  # reported disconnected, never named
    last = status["history"][-1]
    assert last["round"] == 3 and set(last["sites"]) == set(SITES)
    assert {"pooled_auc", "threshold", "sens", "spec"} <= set(last) and last["spec"] >= 0.9
    assert set(last["sites"]["hospital-b"]) == {"auc", "sens", "spec"}
    assert [h["evaluated_by"] for h in status["history"]] == ["round 2", "round 3", "final"]
    assert status["target"] == "specificity >= 0.9"


def test_page_shows_the_newest_evaluated_model():
    """Round r's model is scored by round r+1's messages: until then its row has no AUC, and the
    page's operating point and per-site figures stay those of the newest model that has one."""
    from mammo_fl.server.dashboard import page_context

    scored = {"round": 1, "evaluated_by": "round 2", "pooled_auc": 0.8, "threshold": 0.4, "sens": 0.7,
              "spec": 0.9, "sites": {"a": {"auc": 0.8, "sens": 0.7, "spec": 0.9}}}
    pending = {"round": 2, "evaluated_by": None, "pooled_auc": None, "threshold": None, "sens": None,
               "spec": None, "sites": {}}
    status = {"history": [scored, pending], "sites": [{"name": "a"}], "rounds": 3, "completed_rounds": 2}
    ctx = page_context(status)
    assert ctx["latest"] is scored and ctx["op_rows"] == [scored]
    assert ctx["sites"][0]["metrics"] == scored["sites"]["a"]


def test_flower_node_list_decides_who_is_online(tmp_path, client_for):
    make_run(tmp_path, rounds=1, finished=True)
    nodes = {NODES["hospital-a"]: "online", NODES["hospital-b"]: "offline", 999: "online", 998: "unregistered"}
    status = client_for(tmp_path, nodes).get("/api/status").json()
    named = {s["name"]: s for s in status["sites"]}
    assert named["hospital-a"]["online"] is True and named["hospital-b"]["online"] is False
    assert named["node-999"]["online"] is True and "node-998" not in named  # connected, not named yet
    assert status["phase"] == "completed" and status["online_source"] == "flower"


def test_page_renders_sites_chart_and_operating_point_read_only(tmp_path, client_for):
    make_run(tmp_path, rounds=3, finished=False)
    client = client_for(tmp_path)
    page = client.get("/")
    assert page.status_code == 200 and "no-store" in page.headers["cache-control"]
    assert "default-src 'none'" in page.headers["content-security-policy"]
    html = page.text
    for site in SITES:
        assert f'data-site="{site}"' in html and f'data-series="{site}"' in html
    assert "<polyline" in html and 'data-series="pooled"' in html and 'id="op-threshold"' in html
    assert client.get("/fragment").text.count('class="site"') == len(SITES) + 1
    assert client.get("/dashboard.js").headers["content-type"].startswith("text/javascript")
    for method in ("post", "put", "delete"):
        assert getattr(client, method)("/api/status").status_code == 405


def test_site_names_are_escaped(tmp_path, client_for):
    rundir = make_run(tmp_path, rounds=1, finished=False)
    rundir.event("site_rejected", round=1, kind="train", site="<b>x</b>", node=77, reason="<script>")
    html = client_for(tmp_path).get("/").text
    assert "<b>x</b>" not in html and "&lt;b&gt;x&lt;/b&gt;" in html and "<script>" not in html.split("<body")[1]


def test_empty_run_folder_and_half_written_event(tmp_path, client_for):
    status = client_for(tmp_path).get("/api/status").json()
    assert status["sites"] == [] and status["history"] == [] and status["phase"] == "starting"
    (tmp_path / "events.jsonl").write_text('{"event": "started", "rounds": 4, "time": 1.0}\n{"event": "wait')
    reader = RunReader(tmp_path)
    assert reader.status()["rounds"] == 4
    with open(tmp_path / "events.jsonl", "a") as fh:
        fh.write('ing", "round": 1, "connected": 1, "need": 2, "time": 2.0}\n')
    assert reader.status()["phase"] == "waiting for sites (1/2 connected)"
    assert "No evaluated round yet" in client_for(tmp_path).get("/").text


def test_parse_flower_node_list():
    out = ('Using SuperLink\n{"success": true, "nodes": [{"node-id": "3252973314948722078", "status": "online"},'
           ' {"node-id": "5", "status": "unregistered"}]}')
    assert parse_node_list(out) == {3252973314948722078: "online", 5: "unregistered"}
    assert parse_node_list('{"success": false, "error-message": "unavailable"}') is None
    assert parse_node_list("garbage") is None


def test_start_dashboard_serves_on_loopback_and_refuses_a_taken_port(tmp_path):
    make_run(tmp_path, rounds=1, finished=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dash = start_dashboard(str(port), tmp_path)
    try:
        assert dash.url == f"http://127.0.0.1:{port}/" and dash.loopback
        with urllib.request.urlopen(dash.url + "api/status", timeout=30) as resp:
            assert json.loads(resp.read())["run"] == tmp_path.name
        with pytest.raises(MammoError, match="cannot listen"):
            start_dashboard(f"127.0.0.1:{port}", tmp_path)
    finally:
        dash.stop()
    assert dashboard_address("0.0.0.0:8080") == ("0.0.0.0", 8080)
    with pytest.raises(MammoError):
        dashboard_address("70000")
