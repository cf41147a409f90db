"""End to end on loopback: real `mammo-server` (SuperLink) and three real `mammo-client`s (SuperNodes)
on synthetic sites with a tiny model. The three sites stay up for the whole module; each test
starts its own coordinator (a fresh SuperLink; the clients' supervisors reconnect)."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pandas as pd
import pytest
from federation_support import (
    E2E_TIMEOUT_S,
    FAST,
    events,
    make_checkpoint,
    make_sites,
    start_client,
    start_server,
    stop,
    wait_exit,
    wait_for,
)

from mammo_fl.client.audit import AUDIT_FIELDS, read_entries, read_lines
from mammo_fl.client.audit_verify import verify_chain
from mammo_fl.common.federation import protocol as P
from mammo_fl.common.federation.processes import free_port

ALLOWED_METRICS = set(P.TRAIN_METRICS) | set(P.EVAL_METRICS)


# Real SuperLink + SuperNodes over loopback: minutes per round on a loaded 2-core box,
# so these run with `make test-slow` (and in CI after the default suite).
pytestmark = pytest.mark.slow

@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    root = tmp_path_factory.mktemp("fed")
    sites = make_sites(root / "sites", sites=3, patients=30)
    model = make_checkpoint(root / "init.pt")
    address = f"127.0.0.1:{free_port()}"
    clients = [start_client(s, address, root / f"{s.name}.log") for s in sites]
    yield {"root": root, "sites": sites, "model": model, "address": address}
    for c in clients:
        stop(c)


def _site_val_scores(site_dir, checkpoint):
    """The validation scores a site would compute for `checkpoint` (same split, cache, model)."""
    from mammo_fl.client.site import load_site_images, resolve_site, site_subsets
    from mammo_fl.common.models.checkpoint import load_checkpoint
    from mammo_fl.common.training.datasets import WholeImageDataset
    from mammo_fl.common.evaluation.inference import predict_scores
    from mammo_fl.common.imaging.cache import ImageCache
    from mammo_fl.common.imaging.geometry import PreprocessSettings

    ck = load_checkpoint(checkpoint)
    site = resolve_site({"site": site_dir.name, "data-dir": str(site_dir)}, {})
    _, val = site_subsets(site, load_site_images(site), 0.3, 0)  # the split the site saved
    cache = ImageCache(site.state_dir / "cache", PreprocessSettings.from_dict(ck.preprocessing))
    ds = WholeImageDataset(val, cache, mean=float(ck.preprocessing["mean"]), augment=False)
    return val["label"].astype(int).to_numpy(), predict_scores(ck.model, ds, "cpu")


@pytest.mark.timeout(E2E_TIMEOUT_S)
def test_two_rounds_three_sites(federation):
    from mammo_fl.common.models.checkpoint import load_checkpoint
    from mammo_fl.common.evaluation.metrics import auc, score_histograms

    root, out = federation["root"], federation["root"] / "run-a"
    log = root / "server-a.log"
    server = start_server(federation["model"], out, federation["address"], rounds=2, min_sites=3, log=log,
                          settings=FAST)
    assert wait_exit(server, 1500, log) == 0, log.read_text()[-3000:]

    # Checkpoints for every round exist, load, and moved away from the initial weights.
    init = load_checkpoint(federation["model"]).model.state_dict()
    for rnd in (1, 2):
        ck = load_checkpoint(out / f"round_{rnd:03d}.pt")
        assert ck.kind == "whole_image" and ck.provenance["federation"]["round"] == rnd
    final = load_checkpoint(out / "final.pt").model.state_dict()
    changed = [k for k in init if init[k].is_floating_point() and not np.allclose(init[k], final[k])]
    assert len(changed) > len(init) // 2

    table = pd.read_csv(out / "metrics.csv")
    assert list(table["round"]) == [1, 2] and list(table["sites"]) == [3, 3]
    assert {f"auc_{s.name}" for s in federation["sites"]} <= set(table.columns)
    assert (out / "auc_per_round.png").stat().st_size > 0

    # Pooled AUC (summed histograms) = AUC of the concatenated site scores, up to the bin resolution.
    labels, scores = zip(*(_site_val_scores(s, out / "round_002.pt") for s in federation["sites"]), strict=False)
    y, s = np.concatenate(labels), np.concatenate(scores)
    neg, pos = score_histograms(y, s, bins=1000)
    same_bin_pairs = float((neg * pos).sum()) / (neg.sum() * pos.sum())
    pooled = float(table.loc[table["round"] == 2, "pooled_auc"].iloc[0])
    assert abs(pooled - auc(y, s)) <= 0.5 * same_bin_pairs + 1e-6
    assert int(table.loc[1, "n_pos"]) == int(y.sum()) and int(table.loc[1, "n_neg"]) == int((1 - y).sum())

    # Each row says which message carried its evaluation: round 1's model was scored by round 2's
    # sites before they trained, the final model by the one evaluation message after the last round.
    assert list(table["evaluated_by"]) == ["round 2", "final"]
    assert (table["bytes_down_per_site"] > 0).all() and (table["bytes_up_per_site"] > 0).all()

    # Audit logs: only the allowed fields, one message per round plus the final evaluation, updates hashed.
    for site in federation["sites"]:
        entries = [e for e in read_entries(site / ".mammo-fl") if e["run_id"] == entries_run_id(out)]
        assert entries and all(set(e) == set(AUDIT_FIELDS) for e in entries)
        assert sorted((e["round"], e["kind"]) for e in entries) == [(1, "train"), (2, "evaluate"), (2, "train")]
        for e in entries:
            assert set(e["sent"]["metrics"]) | set(e["sent"]["eval"]) <= ALLOWED_METRICS
            assert e["status"] == "ok" and e["sent"]["bytes"] > 0
            assert (e["sent"]["weights_sha256"] is None) == (e["kind"] == "evaluate")
        assert verify_chain(read_lines(site / ".mammo-fl")).intact


def entries_run_id(rundir) -> int:
    return int(json.loads((rundir / "state.json").read_text())["run_id"])


@pytest.mark.timeout(E2E_TIMEOUT_S)
def test_resume_after_server_kill(federation):
    """Kill the whole coordinator after round 1; --resume finishes round 2 with FedAdam state restored."""
    root, out = federation["root"], federation["root"] / "run-b"
    log = root / "server-b.log"
    settings = FAST + ["strategy=fedadam", "eta=1e-3"]
    server = start_server(federation["model"], out, federation["address"], rounds=2, min_sites=3, log=log,
                          settings=settings)
    wait_for(lambda: (out / "state.json").exists(), 1500, "round 1 to complete", proc=server)
    os.killpg(server.pid, signal.SIGKILL)  # coordinator crash: wrapper, flwr run, SuperLink
    server.wait()
    done = json.loads((out / "state.json").read_text())["completed_round"]
    assert done in (1, 2)
    moments = np.load(out / "strategy_state.npz")
    assert any(k.startswith("m_t/") for k in moments.files)

    server = start_server(federation["model"], out, federation["address"], rounds=2, min_sites=3, log=log,
                          settings=settings, resume=True)
    assert wait_exit(server, 1500, log) == 0, log.read_text()[-3000:]
    table = pd.read_csv(out / "metrics.csv")
    assert list(table["round"]) == [1, 2]  # no lost and no repeated rounds
    resumed = [e for e in events(out) if e["event"] == "resumed"]
    assert resumed and resumed[-1]["completed_round"] == done
    if done == 1:  # FedAdam moments came back from RUNDIR
        assert resumed[-1]["strategy_arrays"] > 0 and "resuming after round 1" in log.read_text()
    assert json.loads((out / "state.json").read_text())["completed_round"] == 2
    assert (out / "final.pt").exists()
