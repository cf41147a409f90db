"""Test-only fault injection (client/faults.py) and the real ClientApp handler end to end on a tiny
synthetic site: DP clipping as asked, then the fault, and the audit entry equal to what was sent."""

from __future__ import annotations

import math

import numpy as np
import pytest
from federation_support import PREPROCESSING, TINY_SPEC

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


def _message(down, config: dict):
    """A round-2 TRAIN message as the coordinator sends it (issue 18): the packed model + its round config."""
    from flwr.app import Message

    from mammo_fl.common.federation.round_config import RoundConfig

    rc = RoundConfig(server_round=2, fed_id="t", model_kind="whole_image", model_spec=TINY_SPEC,
                     preprocessing=PREPROCESSING, hist_bins=50, val_fraction=0.4, **config)
    record = rc.to_record()
    record["max-steps"], record["batch-size"], record["augment"], record["lr"] = 1, 2, False, 1e-3
    return Message(down.contents([1], record)[1], 1, "train")


@pytest.mark.parametrize("wire", ["fp16", "int8"])
def test_the_handler_clips_then_applies_the_fault_and_logs_exactly_what_left(tmp_path, synth_sites, task_identity,
                                                                              wire):
    """The real handler (in-process site work, as in simulation and the worker fallback): an honest site's
    clipped update is within dp-clip-norm as the coordinator decodes it from the wire dtype; a faulty one's is scaled
    after the clip; claim-examples lies in the reply; histogram noise keeps the totals consistent; the audit
    entry holds exactly what left (the reply's SHA-256, the packed update's)."""
    import torch
    from flwr.app import Context, RecordDict

    from mammo_fl.client import site_work
    from mammo_fl.client.app import handle
    from mammo_fl.common.models import build_model
    from mammo_fl.server.downlink import Downlink

    torch.manual_seed(0)
    site_work._SESSIONS.clear()
    arrays = P.state_to_numpy(build_model("whole_image", TINY_SPEC).state_dict())
    down = Downlink(arrays, sorted(arrays), wire)
    state = tmp_path / "state"
    node = {"site": "h1", "data-dir": str(synth_sites / "site-1"), "state-dir": str(state), "num-threads": 1,
            "cache-workers": 1, "min-patients-per-class": 0}
    ctx = Context(run_id=5, node_id=1, node_config=node, state=RecordDict(), run_config={})
    dp = {"dp_clip_norm": 0.05, "wire_dtype": wire}

    honest = handle(_message(down, {**dp, "evaluate": True, "dp_histogram_noise": 3.0}), ctx, "train").content
    assert honest.config_records[P.SITE]["status"] == P.STATUS_OK, honest.config_records[P.SITE]
    norm = update_norm(down.decode_update(honest), arrays)
    assert 0.05 * 0.99 < norm <= 0.05  # clipped, and still within the clip after the fp16 / int8 rounding
    hists = dict(honest.metric_records[P.EVAL])
    assert hists["num-examples"] == sum(hists["hist-neg"]) + sum(hists["hist-pos"])  # noised, consistent

    node["test-fault"] = "scale:10"
    scaled = handle(_message(down, dp), ctx, "train").content
    assert update_norm(down.decode_update(scaled), arrays) == pytest.approx(10 * 0.05, rel=1e-3)  # clip, then x10

    node["test-fault"] = "claim-examples:5000"
    greedy = handle(_message(down, dp), ctx, "train").content
    assert greedy.metric_records[P.METRICS]["num-examples"] == 5000

    first, second, _ = read_entries(state)
    assert first["sent"]["sha256"] == honest.object_id and first["sent"]["eval"] == hists
    sent = P.arrayrecord_to_numpy(scaled.array_records[P.ARRAYS])  # the packed update exactly as it left
    assert second["sent"]["sha256"] == scaled.object_id and second["sent"]["weights_sha256"] == P.arrays_sha256(sent)
    assert second["sent"]["wire"]["dtype"] == wire and second["received"]["config"]["dp-clip-norm"] == 0.05
