"""The site audit log: what a real ClientApp handler replies is exactly what it logs, hash-chained;
`mammo-client audit verify` finds an edited, deleted or cut entry and says what left the site."""

from __future__ import annotations

import json
import multiprocessing
import shutil

import numpy as np
import pytest

from mammo_fl.client.audit import (
    AUDIT_FIELDS,
    AUDIT_FILE,
    GENESIS,
    append_entry,
    build_entry,
    line_sha256,
    read_entries,
    read_lines,
)
from mammo_fl.client.audit_verify import describe_entry, verify_chain
from mammo_fl.client.cli import main as client_main
from mammo_fl.common.federation import protocol as P
from mammo_fl.common.utils.errors import DataError


def _records(rnd: int, loss: float = 0.5):
    """A request and the reply to it as they travel (issue 18): packed model down, packed delta + the
    received model's evaluation + the training figures up."""
    from flwr.app import ConfigRecord, MetricRecord, RecordDict

    from mammo_fl.common.federation import wire as W

    model = {"w": np.ones(3, np.float32)}
    down, down_meta = P.packed_to_records(W.pack_full(model, W.Layout.of(model)))
    up, up_meta = P.packed_to_records(W.pack_delta({"w": np.full(3, 1.5, np.float32)}, model, W.Layout.of(model),
                                                   "fp32"))
    received = RecordDict({P.ARRAYS: down, P.WIRE: ConfigRecord(down_meta),
                           P.CONFIG: ConfigRecord({"server-round": rnd, "lr": 2e-4, "dp-clip-norm": 1.0})})
    reply = RecordDict({P.ARRAYS: up, P.WIRE: ConfigRecord(up_meta),
                        P.METRICS: MetricRecord({"num-examples": 12, "train-loss": loss, "train-seconds": 3.0}),
                        P.EVAL: MetricRecord({"num-examples": 3, "num-pos": 1, "hist-neg": [2, 0], "hist-pos": [0, 1],
                                              "eval-seconds": 1.0}),
                        P.SITE: ConfigRecord({"site": "h1", "status": "ok"})})
    return received, reply


def _log(state, rounds=3):
    for rnd in range(1, rounds + 1):
        received, reply = _records(rnd)
        append_entry(state, build_entry(site="h1", run_id=7, rnd=rnd, kind="train", received=received, reply=reply))
    return state / AUDIT_FILE


def test_entries_are_chained_and_hold_what_left_the_site(tmp_path):
    path = _log(tmp_path)
    lines = path.read_text().splitlines()
    entries = read_entries(tmp_path)
    assert [e["seq"] for e in entries] == [1, 2, 3] and all(set(e) == set(AUDIT_FIELDS) for e in entries)
    assert entries[0]["prev_sha256"] == GENESIS
    assert [e["prev_sha256"] for e in entries[1:]] == [line_sha256(line) for line in lines[:-1]]
    received, reply = _records(1)
    first = entries[0]
    assert first["sent"]["sha256"] == reply.object_id and first["received"]["sha256"] == received.object_id
    assert first["sent"]["metrics"] == {"num-examples": 12, "train-loss": 0.5, "train-seconds": 3.0}
    assert first["sent"]["weights_sha256"] == P.arrays_sha256(P.arrayrecord_to_numpy(reply[P.ARRAYS]))
    assert first["sent"]["eval"]["hist-pos"] == [0, 1] and first["sent"]["wire"]["mode"] == "delta"
    assert first["received"]["config"]["lr"] == 2e-4 and first["sent"]["bytes"] == P.recorddict_nbytes(reply)
    report = verify_chain(read_lines(tmp_path))
    assert report.intact and report.head == line_sha256(lines[-1]) and len(report.entries) == 3
    words = describe_entry(first)
    assert "round 1, train" in words and "num-examples = 12" in words and "a model update (delta fp32, 2 packed" in words
    assert "histograms (2 bins, 2 negative and 1 positive scores" in words
    assert "lr = 0.0002" in words and "dp-clip-norm = 1 " in words


@pytest.mark.parametrize("tamper,problem", [
    ("edit", "line 3: its prev_sha256 does not match line 2"),
    ("delete-first", "line 1: its prev_sha256 does not match the start of the log"),
    ("delete-middle", "line 2: its prev_sha256 does not match line 1"),
    ("cut-last", "line 3 is not a JSON entry"),
])
def test_verify_finds_a_changed_log(tmp_path, tamper, problem):
    lines = _log(tmp_path).read_text().splitlines()
    if tamper == "edit":
        entry = json.loads(lines[1])
        entry["sent"]["metrics"]["train-loss"] = 0.01  # a prettier loss
        lines[1] = json.dumps(entry, sort_keys=True, separators=(",", ":"))
    elif tamper == "delete-first":
        lines = lines[1:]
    elif tamper == "delete-middle":
        del lines[1]
    else:
        lines[2] = lines[2][:40]
    (tmp_path / AUDIT_FILE).write_text("\n".join(lines) + "\n")
    report = verify_chain(read_lines(tmp_path))
    assert not report.intact and any(p.startswith(problem) for p in report.problems), report.problems


def test_a_recorded_head_protects_the_newest_entry(tmp_path):
    path = _log(tmp_path)
    head = verify_chain(read_lines(tmp_path)).head
    _log(tmp_path, rounds=1)  # later entries keep the old head in the log
    assert verify_chain(read_lines(tmp_path), head).intact
    lines = path.read_text().splitlines()
    entry = json.loads(lines[2])
    entry["sent"]["metrics"]["num-examples"] = 1
    lines[2] = json.dumps(entry, sort_keys=True, separators=(",", ":"))
    path.write_text("\n".join(lines[:3]) + "\n")  # edit the recorded entry and drop what followed
    report = verify_chain(read_lines(tmp_path), head)
    assert not report.intact and "recorded head" in report.problems[-1]


def test_legacy_unchained_lines_are_reported_and_linked(tmp_path):
    (tmp_path / AUDIT_FILE).write_text('{"time": "2025-01-01T00:00:00Z", "kind": "train", "status": "ok"}\n')
    _log(tmp_path, rounds=2)
    report = verify_chain(read_lines(tmp_path))
    assert report.intact and report.legacy == 1 and len(report.entries) == 2
    (tmp_path / AUDIT_FILE).write_text("{not json\n")
    with pytest.raises(DataError, match="line 1"):
        read_entries(tmp_path)


def _append_many(state, n):
    for rnd in range(n):
        received, reply = _records(rnd)
        append_entry(state, build_entry(site="h1", run_id=1, rnd=rnd, kind="evaluate", received=received, reply=reply))


def test_concurrent_writers_keep_one_chain(tmp_path):
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_append_many, args=(tmp_path, 15)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    report = verify_chain(read_lines(tmp_path))
    assert report.intact and len(report.entries) == 30


def test_audit_verify_command(tmp_path, capsys):
    data = tmp_path / "site"
    _log(data / ".mammo-fl")
    assert client_main(["audit", "verify", "--data", str(data)]) == 0
    out = capsys.readouterr().out
    assert "3 chained entries" in out and "run 7, round 2, train" in out and "audit chain intact; head" in out
    lines = (data / ".mammo-fl" / AUDIT_FILE).read_text().splitlines()
    (data / ".mammo-fl" / AUDIT_FILE).write_text("\n".join([lines[0], lines[2]]) + "\n")
    assert client_main(["audit", "verify", "--data", str(data)]) == 1
    out = capsys.readouterr().out
    assert "BROKEN: line 2" in out and "audit chain BROKEN" in out
    moved = tmp_path / "elsewhere"
    shutil.move(str(data / ".mammo-fl"), moved)
    assert client_main(["audit", "verify", "--data", str(data), "--state-dir", str(moved)]) == 1
    assert client_main(["audit", "verify", "--data", str(tmp_path / "none")]) == 2
    assert "no audit log here" in capsys.readouterr().err


def test_weights_digest_is_order_independent_and_sensitive():
    a = {"x": np.arange(6, dtype=np.float32).reshape(2, 3), "y": np.array(3, np.int64)}
    b = {"y": np.array(3, np.int64), "x": np.arange(6, dtype=np.float32).reshape(2, 3)}
    assert P.arrays_sha256(a) == P.arrays_sha256(b)
    c = {**a, "x": a["x"].copy()}
    c["x"][0, 0] += 1e-6
    assert P.arrays_sha256(a) != P.arrays_sha256(c)


def test_client_handler_logs_its_error_reply_without_paths(tmp_path, task_identity):
    """A site whose data folder is empty: the real ClientApp handler replies with a path-free
    error, and the audit log records that reply (kind, round, size, request, no weights)."""
    from flwr.app import ConfigRecord, Context, Message, RecordDict

    from mammo_fl.client.app import handle

    from mammo_fl.common.federation import wire as W
    from mammo_fl.common.federation.round_config import RoundConfig
    from mammo_fl.common.models import build_model

    data = tmp_path / "hospital-x-data"
    data.mkdir()
    state = tmp_path / "state"
    spec = {"trunk": "resnet_tiny", "top": {"type": "vgg", "blocks": [[8, 1]]}, "num_classes": 2}
    arrays = P.state_to_numpy(build_model("whole_image", spec).state_dict())
    packed = W.pack_full(arrays, W.Layout.of(arrays))
    record, meta = P.packed_to_records(packed)
    rc = RoundConfig(server_round=3, fed_id="f", model_kind="whole_image", model_spec=spec,
                     preprocessing={"height": 64, "width": 48, "mode": "paper", "mean": 40.0}, evaluate=True)
    msg = Message(RecordDict({P.ARRAYS: record, P.CONFIG: rc.to_record(),
                              P.WIRE: ConfigRecord({**meta, "base": "", "target": W.arrays_digest(arrays)})}),
                  9, "train")
    ctx = Context(run_id=5, node_id=9, node_config={"site": "h-x", "data-dir": str(data), "state-dir": str(state)},
                  state=RecordDict(), run_config={})
    reply = handle(msg, ctx, "train")
    site = reply.content.config_records[P.SITE]
    assert site["site"] == "h-x" and site["status"] == P.STATUS_ERROR
    assert site["error"] == "data-error"  # a fixed code: no message, path or value leaves the site
    assert not reply.content.array_records  # nothing else leaves the site
    (entry,) = read_entries(state)
    assert set(entry) == set(AUDIT_FIELDS)
    assert (entry["site"], entry["round"], entry["kind"], entry["status"]) == ("h-x", 3, "train", "error")
    assert entry["sent"]["weights_sha256"] is None and entry["sent"]["bytes"] == P.recorddict_nbytes(reply.content)
    assert entry["sent"]["sha256"] == reply.content.object_id and entry["sent"]["site_record"]["error"] == site["error"]
    assert entry["received"]["config"]["server-round"] == 3
    assert str(data) in (state / "client.log").read_text()  # details stay local
