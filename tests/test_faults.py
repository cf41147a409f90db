"""Test-only fault injection (client/faults.py) and the real ClientApp handler end to end on a tiny
synthetic site: DP clipping as asked, then the fault, and the audit entry equal to what was sent."""

from __future__ import annotations

import math

import numpy as np
import pytest
from federation_support import PREPROCESSING, TINY_SPEC
from safeguard_support import task_identity  # noqa: F401

from mammo_fl.client.audit import read_entries
from mammo_fl.client.cli import main as client_main
from mammo_fl.client.faults import Fault, apply_update_fault, claimed_examples, parse_fault, simulation_faults
from mammo_fl.client.site import resolve_site
from mammo_fl.common.federation import protocol as P
from mammo_fl.common.utils.errors import ConfigError
from mammo_fl.server.screening import update_norm


def test_fault_specs_parse_or_fail_in_one_line():
    assert parse_fault("") == Fault("") and parse_fault("nan") == Fault("nan")
    assert parse_fault("scale:1e3") == Fault("scale", 1000.0) and parse_fault("delay:2") == Fault("delay", 2.0)
    assert parse_fault("claim-examples:4611686018427387904") == Fault("claim-examples", 2.0**62)
    for bad, why in (("explode", "unknown kind 'explode'"), ("scale:x", "scale needs a number"),
                     ("claim-examples:1.5", "needs an integer"), ("nan:1", "takes no value")):
        with pytest.raises(ConfigError, match=why):
            parse_fault(bad)
    assert simulation_faults({"test-faults": "site_02=scale:1000; site_00=nan"}) == {
        "site_02": "scale:1000", "site_00": "nan"}
    with pytest.raises(ConfigError, match="expected SITE=FAULT"):
        simulation_faults({"test-faults": "scale:1000"})


def test_scale_multiplies_the_update_and_claims_replace_num_examples():
    received = {"w": np.ones(4, np.float32), "n": np.array(3, np.int64)}
    sent = {"w": np.array([1.5, 1.0, 0.5, 1.0], np.float32), "n": np.array(5, np.int64)}
    out = apply_update_fault(Fault("scale", 1000.0), sent, received)
    np.testing.assert_allclose(out["w"], [501.0, 1.0, -499.0, 1.0])
    assert int(out["n"]) == 5 and apply_update_fault(Fault(""), sent, received) == sent
    assert math.isnan(apply_update_fault(Fault("nan"), sent, received)["w"][0])
    assert claimed_examples(Fault("claim-examples", 2.0**62), 12) == 2**62 and claimed_examples(Fault(""), 12) == 12


def test_run_config_faults_reach_simulated_sites_only(tmp_path):
    (tmp_path / "site_00").mkdir()
    (tmp_path / "site_01").mkdir()
    rc = {"sites-dir": str(tmp_path), "test-faults": "site_01=claim-examples:99"}
    assert resolve_site({"partition-id": 1}, rc).fault == "claim-examples:99"
    assert resolve_site({"partition-id": 0}, rc).fault == ""
    deployed = resolve_site({"site": "site_01", "data-dir": str(tmp_path / "site_01")}, rc)
    assert deployed.fault == ""  # a coordinator cannot make a real site misbehave


def test_client_refuses_a_mistyped_fault(tmp_path, capsys):
    code = client_main(["--site", "h1", "--data", str(tmp_path), "--server", "127.0.0.1:1", "--insecure",
                        "--test-fault", "scale:big"])
    err = capsys.readouterr().err
    assert code == 2 and "scale needs a number" in err and len(err.strip().splitlines()) == 1


def _message(kind: str, arrays: dict, config: dict):
    from flwr.app import Message, RecordDict

    from mammo_fl.common.federation.round_config import RoundConfig

    rc = RoundConfig(server_round=2, fed_id="t", model_kind="whole_image", model_spec=TINY_SPEC,
                     preprocessing=PREPROCESSING, hist_bins=50, val_fraction=0.4, **config)
    record = rc.to_record()
    record["max-steps"], record["batch-size"], record["augment"], record["lr"] = 1, 2, False, 1e-3
    return Message(RecordDict({P.ARRAYS: P.numpy_to_arrayrecord(arrays), P.CONFIG: record}), 1, kind)


def test_the_handler_clips_then_applies_the_fault_and_logs_exactly_what_left(tmp_path, synth_sites, task_identity):
    import torch
    from flwr.app import Context, RecordDict

    from mammo_fl.client.app import handle
    from mammo_fl.common.models import build_model

    torch.manual_seed(0)
    arrays = P.state_to_numpy(build_model("whole_image", TINY_SPEC).state_dict())
    state = tmp_path / "state"
    node = {"site": "h1", "data-dir": str(synth_sites / "site-1"), "state-dir": str(state), "num-threads": 1,
            "cache-workers": 1, "test-fault": "scale:10"}
    ctx = Context(run_id=5, node_id=1, node_config=node, state=RecordDict(), run_config={})
    reply = handle(_message("train", arrays, {"dp_clip_norm": 0.05}), ctx, "train").content
    assert reply.config_records[P.SITE]["status"] == P.STATUS_OK, reply.config_records[P.SITE]
    sent = P.arrayrecord_to_numpy(reply.array_records[P.ARRAYS])
    assert update_norm(sent, arrays) == pytest.approx(10 * 0.05, rel=1e-3)  # clipped to 0.05, then scaled x10

    node["test-fault"] = "claim-examples:5000"
    ev = handle(_message("evaluate", arrays, {"dp_histogram_noise": 3.0}), ctx, "evaluate").content
    metrics = dict(ev.metric_records[P.METRICS])
    assert metrics["num-examples"] == sum(metrics["hist-neg"]) + sum(metrics["hist-pos"])  # noised, consistent
    train_entry, eval_entry = read_entries(state)
    assert train_entry["sent"]["sha256"] == reply.object_id
    assert train_entry["sent"]["weights_sha256"] == P.arrays_sha256(sent)
    assert train_entry["received"]["config"]["dp-clip-norm"] == 0.05
    assert eval_entry["sent"]["metrics"] == metrics and eval_entry["prev_sha256"] != train_entry["prev_sha256"]
