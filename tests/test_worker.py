"""The site worker as mammo-client runs it: a real process behind a 0600 Unix socket, restarted when
it dies, gone when its supervisor dies, and doing a round's real work for the ClientApp."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from mammo_fl.client.channel import ChannelError, call, socket_path
from mammo_fl.client.worker_process import SiteWorker
from mammo_fl.common.federation import protocol as P
from mammo_fl.common.federation import wire as W
from mammo_fl.common.federation.processes import flower_env

SPEC = {"trunk": "resnet_tiny", "top": {"type": "vgg", "blocks": [[8, 1]]}, "num_classes": 2}
PREP = {"height": 64, "width": 48, "mode": "paper", "mean": 40.0}
START_S = 300  # the worker imports torch before it listens: slow on a loaded 2-core box


def _ping(path: Path) -> dict:
    return call(path, {"kind": "ping"}, connect_timeout_s=START_S)[0]


@pytest.fixture()
def worker(tmp_path):
    w = SiteWorker(socket_path(tmp_path / "state"), tmp_path / "worker.log", flower_env(tmp_path / "home"))
    w.start()
    yield w
    w.stop()


def test_socket_is_private_and_a_dead_worker_is_restarted(worker):
    first = _ping(worker.socket_path)["pid"]
    assert (worker.socket_path.stat().st_mode & 0o777) == 0o600
    os.kill(first, signal.SIGKILL)
    deadline = time.monotonic() + 60
    lines = []
    while time.monotonic() < deadline and len(lines) < 2:
        line = worker.check()
        if line:
            lines.append(line)
        time.sleep(0.2)
    assert "exited" in lines[0] and "restarted" in lines[1]
    assert _ping(worker.socket_path)["pid"] != first


@pytest.mark.parametrize("wire,wire_np", [("bf16", np.uint16), ("int8", np.int8)])
def test_worker_does_a_rounds_work_for_the_clientapp(worker, tmp_path, synth_sites, wire, wire_np):
    from mammo_fl.common.federation.round_config import RoundConfig
    from mammo_fl.common.models import build_model
    from mammo_fl.common.training.finetune_config import FineTuneConfig

    data = shutil.copytree(synth_sites / "site-1", tmp_path / "site-1")
    arrays = P.state_to_numpy(build_model("whole_image", SPEC).state_dict())
    packed = W.pack_full(arrays, W.Layout.of(arrays))
    rc = RoundConfig(server_round=1, fed_id="f", model_kind="whole_image", model_spec=SPEC, preprocessing=PREP,
                     finetune=FineTuneConfig(batch_size=2, max_steps=1, augment=False), val_fraction=0.4,
                     num_threads=1, hist_bins=20, evaluate=True, wire_dtype=wire)
    header = {"kind": "train", "config": dict(rc.to_record()), "run_config": {},
              "wire": {"mode": packed.mode, "dtype": packed.dtype, "layout": packed.layout, "exponents": [],
                       "base": "", "target": W.arrays_digest(arrays)},
              "node_config": {"site": "h1", "data-dir": str(data), "state-dir": str(tmp_path / "state"),
                              "min-patients-per-class": 0}}  # a 3-patient site: evaluate anyway
    out, update = call(worker.socket_path, header, {P.FLOATS: packed.floats, P.INTS: packed.ints},
                       connect_timeout_s=START_S)
    assert out["status"] == "ok", out
    assert out["held"] == W.arrays_digest(arrays) and sum(out["eval"]["hist-neg"] + out["eval"]["hist-pos"]) > 0
    assert out["train"]["num-examples"] > 0 and out["wire"]["dtype"] == wire
    assert update[P.FLOATS].dtype == wire_np and update[P.FLOATS].size == packed.floats.size
    assert (P.SCALES in update) == (wire == "int8")  # int8's block scales come back over the socket too
    # the worker writes the model it holds after answering: a restarted worker can take deltas
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (tmp_path / "state" / "held" / "f.json").exists():
        time.sleep(0.2)
    assert (tmp_path / "state" / "held" / "f.json").exists()


def test_worker_does_not_outlive_its_supervisor(tmp_path):
    """SIGKILL mammo-client's stand-in: its worker goes too (PR_SET_PDEATHSIG + parent check)."""
    sock = socket_path(tmp_path / "state")
    script = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from mammo_fl.client.worker_process import SiteWorker
        from mammo_fl.common.federation.processes import flower_env
        w = SiteWorker(Path({str(sock)!r}), Path({str(tmp_path / 'w.log')!r}), flower_env(Path({str(tmp_path)!r})))
        print(w.start(), flush=True)
        time.sleep(3600)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    pid = int(parent.stdout.readline())
    assert _ping(sock)["pid"] == pid
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        if Path(f"/proc/{pid}/stat").exists() and Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] == "Z":
            break
        time.sleep(0.2)
    else:
        raise AssertionError("the worker outlived its supervisor")
    with pytest.raises(ChannelError):
        call(sock, {"kind": "ping"}, connect_timeout_s=1)
