"""The site audit log: what a real ClientApp handler replies is exactly what it logs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mammo_fl.client.audit import AUDIT_FIELDS, AuditEntry, append_entry, read_entries
from mammo_fl.common.federation import protocol as P
from mammo_fl.common.utils.errors import DataError


def test_entries_append_and_read_back(tmp_path):
    e = AuditEntry(time="2026-01-01T00:00:00Z", site="h1", run_id=7, round=2, kind="train", bytes=123,
                   weights_sha256="ab" * 32, metric_names=["num-examples"], status="ok")
    append_entry(tmp_path, e)
    append_entry(tmp_path, e)
    entries = read_entries(tmp_path)
    assert len(entries) == 2 and set(entries[0]) == set(AUDIT_FIELDS)
    (tmp_path / "audit.jsonl").write_text("{not json\n")
    with pytest.raises(DataError, match="line 1"):
        read_entries(tmp_path)


def test_weights_digest_is_order_independent_and_sensitive():
    a = {"x": np.arange(6, dtype=np.float32).reshape(2, 3), "y": np.array(3, np.int64)}
    b = {"y": np.array(3, np.int64), "x": np.arange(6, dtype=np.float32).reshape(2, 3)}
    assert P.arrays_sha256(a) == P.arrays_sha256(b)
    c = {**a, "x": a["x"].copy()}
    c["x"][0, 0] += 1e-6
    assert P.arrays_sha256(a) != P.arrays_sha256(c)


@pytest.fixture()
def task_identity():
    from flwr.supercore.task_identity import TaskIdentity

    old = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 5, 9, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = old


def test_client_handler_logs_its_error_reply_without_paths(tmp_path, task_identity):
    """A site whose data folder is empty: the real ClientApp handler replies with a path-free
    error, and the audit log records that reply (kind, round, size, no weights)."""
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
    assert entry["weights_sha256"] is None and entry["bytes"] == P.recorddict_nbytes(reply.content)
    assert str(data) in (state / "client.log").read_text()  # details stay local
    json.dumps(entry)
