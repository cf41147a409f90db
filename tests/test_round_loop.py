"""The coordinator's round loop in process: the real `run_round_loop` and the real ClientApp handler
(real data, real training steps on a tiny model), connected by a loopback grid instead of Flower's
daemons. Checks the rows of metrics.csv (which message evaluated which model), the commit protocol
and --resume, fast enough for the default suite."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
from federation_support import TINY_SPEC, make_checkpoint

from mammo_fl.server.settings import FederationSettings


class LoopbackGrid:
    """Flower's Grid as the round loop uses it; a message is answered at once by the site's real handler."""

    def __init__(self, sites: dict[int, dict]) -> None:
        self.sites = sites
        self.replies: dict[str, object] = {}
        self.sent: list[tuple[int, str]] = []

    def get_node_ids(self) -> list[int]:
        return list(self.sites)

    def push_messages(self, messages):
        from flwr.app import Context, RecordDict

        from mammo_fl.client.app import handle

        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = msg.object_id  # what the SuperLink does on push
            node = msg.metadata.dst_node_id
            ctx = Context(run_id=1, node_id=node, node_config=self.sites[node], state=RecordDict(), run_config={})
            kind = "train" if msg.metadata.message_type == "train" else "evaluate"
            self.replies[msg.metadata.message_id] = handle(msg, ctx, kind)
            self.sent.append((node, kind))
            ids.append(msg.metadata.message_id)
        return ids

    def pull_messages(self, ids):
        return [self.replies.pop(i) for i in ids if i in self.replies]


def _settings(tmp_path, model, rounds: int, resume: bool = False, wire: str = "fp16") -> FederationSettings:
    run_config = {"out-dir": str(tmp_path / "run"), "initial-model": str(model), "num-server-rounds": rounds,
                  "wire-dtype": wire,
                  "min-sites": 2, "max-steps": 1, "batch-size": 2, "val-fraction": 0.4, "num-threads": 1,
                  "hist-bins": 50, "lr": 1e-3, "strategy": "fedadam", "eta": 1e-3, "resume": resume,
                  "evaluate-initial": True, "round-timeout": 600.0, "site-wait-timeout": 60.0}
    return FederationSettings.from_run_config(run_config)


def test_round_loop_rows_commits_and_resume(tmp_path, synth_sites, task_identity):
    from mammo_fl.client import site_work
    from mammo_fl.server.round_loop import run_round_loop

    site_work._SESSIONS.clear()
    model = make_checkpoint(tmp_path / "init.pt")
    sites = {}
    for i, name in enumerate(("site-1", "site-2"), start=1):
        data = shutil.copytree(synth_sites / name, tmp_path / name)
        sites[i] = {"site": name, "data-dir": str(data), "min-patients-per-class": 0}  # 3 patients a site
    grid = LoopbackGrid(sites)
    run_round_loop(grid, _settings(tmp_path, model, rounds=1), run_id=1)
    out = tmp_path / "run"
    table = pd.read_csv(out / "metrics.csv")
    # row 0 = the initial model, scored by round 1's sites before they trained; row 1 by the final evaluation
    assert list(table["round"]) == [0, 1] and list(table["evaluated_by"]) == ["round 1", "final"]
    assert table["pooled_auc"].notna().all() and int(table.loc[1, "sites"]) == 2
    assert table.loc[1, "overhead_seconds"] == pytest.approx(
        table.loc[1, "round_seconds"] - table.loc[1, "max_site_seconds"])
    assert table.loc[1, "bytes_down_per_site"] > 2 * table.loc[1, "bytes_up_per_site"] * 0.9  # full fp32 vs fp16
    assert sorted(grid.sent) == [(1, "evaluate"), (1, "train"), (2, "evaluate"), (2, "train")]
    assert json.loads((out / "state.json").read_text())["completed_round"] == 1
    assert (out / "final.pt").exists() and (out / "strategy_state.npz").exists()

    # --resume with one more round: sites that still hold round 1's model get only a delta
    grid.sent.clear()
    run_round_loop(grid, _settings(tmp_path, model, rounds=2, resume=True), run_id=2)
    table = pd.read_csv(out / "metrics.csv")
    assert list(table["round"]) == [0, 1, 2]
    assert list(table["evaluated_by"]) == ["round 1", "round 2", "final"]
    # after a resume the coordinator does not know what the sites hold: the full model goes out again
    assert table.loc[2, "bytes_down_per_site"] > 1.5 * table.loc[2, "bytes_up_per_site"]
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    resumed = [e for e in events if e["event"] == "resumed"]
    assert resumed and resumed[-1]["strategy_arrays"] > 0  # FedAdam moments came back
    assert json.loads((out / "status.json").read_text())["status"] == "completed"

    # each model's evaluation is attached to that model: its row (operating point, per-site sens/spec),
    # its histograms, its checkpoint; final.pt carries the final evaluation's operating point
    from mammo_fl.common.models.checkpoint import read_checkpoint_meta
    from mammo_fl.server.histogram_store import load_histograms

    assert {"threshold", "sens_site-1", "spec_site-2"} <= set(table.columns)
    assert sorted(load_histograms(out)) == [0, 1, 2]
    round_1 = read_checkpoint_meta(out / "round_001.pt")["metrics"]
    assert round_1["evaluated_by"] == "round 2" and round_1["operating_point"]["round"] == 1
    assert round_1["n_pos"] == int(table.loc[1, "n_pos"]) and round_1["eval_sites"] == 2
    final = read_checkpoint_meta(out / "final.pt")["metrics"]
    assert final["evaluated_by"] == "final" and final["operating_point"]["round"] == 2
    assert final["operating_point"]["n_neg"] == int(table.loc[2, "n_neg"]) > 0
    assert read_checkpoint_meta(out / "round_002.pt")["metrics"] == final


def test_int8_rounds_cost_a_quarter_of_the_model_each_way(tmp_path, synth_sites, task_identity):
    """wire-dtype = int8 through the real round loop and site handler: after the first (full fp32)
    download, a round costs ~0.25x the fp32 model down + ~0.25x up, and metrics.csv says int8."""
    from mammo_fl.client import site_work
    from mammo_fl.common.federation import protocol as P
    from mammo_fl.common.models import build_model
    from mammo_fl.server.round_loop import run_round_loop

    site_work._SESSIONS.clear()
    model = make_checkpoint(tmp_path / "init.pt")
    fp32_bytes = sum(v.nbytes for v in P.state_to_numpy(build_model("whole_image", TINY_SPEC).state_dict()).values())
    sites = {}
    for i, name in enumerate(("site-1", "site-2"), start=1):
        data = shutil.copytree(synth_sites / name, tmp_path / name)
        sites[i] = {"site": name, "data-dir": str(data), "min-patients-per-class": 0}
    run_round_loop(LoopbackGrid(sites), _settings(tmp_path, model, rounds=2, wire="int8"), run_id=1)
    table = pd.read_csv(tmp_path / "run" / "metrics.csv").set_index("round")
    assert list(table.index) == [0, 1, 2] and table["pooled_auc"].notna().all()
    assert set(table.loc[[1, 2], "wire"]) == {"int8"}
    down, up = table["bytes_down_per_site"] / fp32_bytes, table["bytes_up_per_site"] / fp32_bytes
    assert 1.0 <= down[1] < 1.05  # the first message: the full fp32 model
    assert 0.24 < up[1] < 0.27 and 0.24 < up[2] < 0.27 and 0.24 < down[2] < 0.27
    assert down[2] + up[2] <= 0.53, (down[2], up[2])


def test_round_loop_sends_only_to_registered_sites_and_refuses_impostors(tmp_path, synth_sites, task_identity):
    """With a registry (deployed mode): an unregistered node gets nothing, a node whose site calls itself
    by another name than its key's is refused on both sides, and only registered names reach metrics."""
    from mammo_fl.client import site_work
    from mammo_fl.server.round_loop import run_round_loop
    from mammo_fl.server.site_nodes import write_site_nodes

    site_work._SESSIONS.clear()
    model = make_checkpoint(tmp_path / "init.pt")
    sites = {}
    for node, name in ((1, "site-1"), (2, "site-2"), (3, "site-3")):
        data = shutil.copytree(synth_sites / name, tmp_path / name)
        sites[node] = {"site": name, "data-dir": str(data), "min-patients-per-class": 0}
    registry = tmp_path / "site_nodes.json"
    write_site_nodes(registry, {1: "site-1", 2: "site-9"})  # node 2's key is site-9's; node 3 has none
    grid = LoopbackGrid(sites)
    settings = _settings(tmp_path, model, rounds=1)
    settings = type(settings).from_run_config({**settings.to_run_config(), "min-sites": 1,
                                               "site-nodes": str(registry)})
    run_round_loop(grid, settings, run_id=1)
    assert {node for node, _ in grid.sent} == {1, 2}  # the unregistered node was sent nothing
    out = tmp_path / "run"
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    why = {(e["site"], e["kind"]): e["reason"] for e in events if e["event"] == "site_rejected"}
    assert "no registered site" in why[("node-3", "train")]
    assert "answered as 'site-2'" in why[("site-9", "train")]
    assert "[site-name-mismatch]" in (tmp_path / "site-2" / ".mammo-fl" / "client.log").read_text()
    table = pd.read_csv(out / "metrics.csv")
    assert list(table["site_names"].dropna()) == ["site-1"]
    assert not [c for c in table.columns if c.endswith(("site-2", "site-3", "site-9"))]
