"""Robustness on loopback with real processes: in one federation of five sites,
- `site-nan` (test-only node config fault) sends NaN weights -> rejected, site named;
- `site-broken` has a broken manifest -> replies with an error, the run goes on;
- `site-slow` drops out mid-round 1 (its mammo-client is stopped) -> round 1 completes with the
  others, and the site rejoins (restarted) and trains in round 2 (site-2 holds its round-1 reply
  until then: test-fault hold)."""

from __future__ import annotations

import pandas as pd
import pytest
from federation_support import (
    E2E_TIMEOUT_S,
    FAST,
    copy_site,
    events,
    make_checkpoint,
    make_sites,
    start_client,
    start_server,
    stop,
    wait_exit,
    wait_for,
)

from mammo_fl.client.audit import read_entries
from mammo_fl.common.federation.processes import free_port


# Real SuperLink + SuperNodes over loopback: minutes per round on a loaded 2-core box,
# so these run with `make test-slow` (and in CI after the default suite).
pytestmark = pytest.mark.slow

@pytest.fixture(scope="module")
def faulty_federation(tmp_path_factory):
    root = tmp_path_factory.mktemp("fedfaults")
    good = make_sites(root / "sites", sites=2, patients=20, seed=3)
    nan = copy_site(good[0], root / "sites" / "site-nan")
    broken = copy_site(good[1], root / "sites" / "site-broken")
    (broken / "manifest.csv").write_text("image_path,patient_id\nimages/missing.dcm,p1\n")
    slow = copy_site(good[1], root / "sites" / "site-slow")
    address = f"127.0.0.1:{free_port()}"
    logs = root / "logs"
    logs.mkdir()
    # site-2 holds its round-1 reply until the test releases it: round 1 stays open until the dropped
    # site-slow is back (rounds are seconds now; a restarted site takes longer than that to register)
    release = root / "release-site-2"
    procs = {s.name: start_client(s, address, logs / f"{s.name}.log",
                                  *(["--test-fault", f"hold:{release}"] if s.name == "site-2" else []))
             for s in good}
    procs["site-nan"] = start_client(nan, address, logs / "site-nan.log", "--test-fault", "nan")
    procs["site-broken"] = start_client(broken, address, logs / "site-broken.log")
    procs["site-slow"] = start_client(slow, address, logs / "site-slow.log", "--test-fault", "delay:600")
    state = {"root": root, "address": address, "procs": procs, "slow": slow, "logs": logs, "release": release,
             "model": make_checkpoint(root / "init.pt")}
    yield state
    for proc in state["procs"].values():
        stop(proc)


@pytest.mark.timeout(E2E_TIMEOUT_S)
def test_faulty_sites_are_named_and_the_run_goes_on(faulty_federation):
    f = faulty_federation
    out, log = f["root"] / "run", f["root"] / "server.log"
    server = start_server(f["model"], out, f["address"], rounds=2, min_sites=2, log=log,
                          settings=FAST + ["round-retries=0", "start-sites=5"])
    # Drop the slow site while it is in round 1 (it trains, then sleeps before replying).
    audit_dir = f["slow"] / ".mammo-fl"
    wait_for(lambda: any(e["event"] == "round_start" for e in events(out)), 1200, "round 1 start", proc=server)
    wait_for(lambda: (audit_dir / "cache").exists(), 1200, "site-slow to start training", proc=server)
    stop(f["procs"]["site-slow"])
    # ... and bring it back (no fault this time): it must rejoin for round 2. Round 1 ends when site-2
    # replies, which it does once the SuperLink has activated the restarted site's new node.
    f["procs"]["site-slow"] = start_client(f["slow"], f["address"], f["logs"] / "site-slow.log")
    superlink_log = out / ".superlink" / "superlink.log"
    wait_for(lambda: superlink_log.read_text().count("Activated node_id=") >= 6, 1200,
             "the restarted site-slow to register", proc=server)
    f["release"].mkdir()
    (f["release"] / "round-1").touch()
    (f["release"] / "round-2").touch()
    assert wait_exit(server, 1500, log) == 0, log.read_text()[-3000:]

    table = pd.read_csv(out / "metrics.csv")
    r1, r2 = table.iloc[0], table.iloc[1]
    assert set(r1["site_names"].split(",")) == {"site-1", "site-2"}  # the dropped site missed round 1
    assert "site-slow" in r2["site_names"].split(",")  # ... and rejoined for round 2
    assert "site-nan" not in r2["site_names"] and "site-broken" not in r2["site_names"]

    evs = events(out)
    rejected = [e for e in evs if e["event"] == "site_rejected"]
    nan_reasons = {e["reason"] for e in rejected if e["site"] == "site-nan" and e["kind"] == "train"}
    assert nan_reasons and all("NaN/Inf" in r for r in nan_reasons)
    broken = [e["reason"] for e in rejected if e["site"] == "site-broken"]
    assert broken and all(r.startswith("site error [data-error]") for r in broken)
    assert all("/" not in r for r in broken)  # no path leaves the site
    text = log.read_text()
    assert "site-nan" in text and "NaN/Inf" in text and "site-broken" in text and "Traceback" not in text

    # The broken site logged its error replies in its own audit log.
    entries = read_entries(f["root"] / "sites" / "site-broken" / ".mammo-fl")
    assert entries and all(e["status"] == "error" and e["sent"]["weights_sha256"] is None for e in entries)
