"""mammo-sim end to end on the real Flower Simulation Engine: vendor-shifted sites with FedBN, and the
virtual sites on an existing Ray cluster (a local `ray start --head` on loopback)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

RAY = Path(sys.executable).with_name("ray")
TINY_TARGET = ["--set", "target.patients=10", "--set", "target.image_height=320", "--set", "target.image_width=256",
               "--set", "experiment.sizes=[100]", "--set", "experiment.k_sites=[2]", "--set", "finetune.rounds=2",
               "--set", "finetune.local_epochs=1", "--set", "finetune.batch_size=2", "--set", "finetune.max_steps=1",
               "--set", "experiment.torch_threads=1"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A tiny whole-image checkpoint (random init) at 96x64 model input."""
    import torch

    from mammo_fl.common.models import build_model
    from mammo_fl.common.models.checkpoint import save_checkpoint

    spec = {"trunk": "resnet_tiny", "top": {"type": "resnet", "blocks": [[16, 16, 64, 1]]}, "num_classes": 2,
            "dropout": 0.0}
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("cluster_model") / "tiny.pt"
    save_checkpoint(path, build_model("whole_image", spec), kind="whole_image", model_spec=spec,
                    preprocessing={"height": 96, "width": 64, "mode": "paper", "mean": 40.0},
                    class_names=["not_malignant", "malignant"])
    return path


def _sim(out: Path, model: Path, cache: Path, *extra: str, timeout: int = 420) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "mammo_fl.simulations.cli", "--preset", "quick", "--out", str(out), "--model",
           str(model), "--cache-dir", str(cache), *TINY_TARGET, *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.slow  # ~2-4 min on a loaded 2-core host
def test_vendor_sites_with_fedbn_through_flower(tmp_path, tiny_model):
    out = tmp_path / "run"
    _sim(out, tiny_model, tmp_path / "cache", "--set", "experiment.partition='vendor'", "--set", "finetune.fedbn=true",
         "--set", "finetune.local_optimizer_state=true", "--set", "experiment.methods=['pooled','federated']")
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "done", record.get("grid", {}).get("failures")
    assert set(record["target"]["vendors"]) == {"hologic-selenia", "ge-senographe"}  # one per site of K=2
    job = next(j for j in record["grid"]["jobs"] if j["method"] == "federated")
    scanners = job["site_vendors"]
    assert sorted(scanners) == ["site_00", "site_01"]
    assert all(len(v) == 1 for v in scanners.values()) and scanners["site_00"] != scanners["site_01"]
    # FedBN: each site kept its own BatchNorm, and the federated arm was scored with it
    for site in scanners:
        state = out / "sites" / job["run_dir"].split("/")[-1] / site / ".mammo-fl"
        assert len(list((state / "fedbn").glob("*.pt"))) == 1
        # and its Adam state, continued across the 2 rounds of 1 step each (a fresh Adam would count 1)
        (adam,) = (state / "optimizer").glob("*.pt")
        steps = {float(s["step"]) for s in torch.load(adam, weights_only=True)["adam"]["state"].values()}
        assert steps == {2.0} and adam.stat().st_mode & 0o777 == 0o600
    fed = pd.read_csv(out / "predictions" / "federated_k2_n7_seed0.csv", dtype={"image_id": str})
    pooled = pd.read_csv(out / "predictions" / "pooled_n7_seed0.csv", dtype={"image_id": str})
    assert list(fed["image_id"]) == list(pooled["image_id"]) and fed["malignant_prob"].between(0, 1).all()
    assert set(fed["vendor"]) == {"hologic-selenia", "ge-senographe"}
    results = pd.read_csv(out / "transfer_curve.csv")
    assert (results["status"] == "ok").all()
    proc = subprocess.run([sys.executable, "-m", "mammo_fl.simulations.cli", "compare", f"{out}:federated",
                           f"{out}:pooled", "--resamples", "50"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "n=7   K=2 seed=0" in proc.stdout, proc.stderr


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ray_up(address: str) -> bool:
    return subprocess.run([str(RAY), "status", "--address", address], capture_output=True, timeout=60).returncode == 0


@pytest.fixture()
def ray_head():
    """A Ray head node on loopback with a marker resource; stopped (its whole process group) in teardown.

    Never `ray stop`: that would stop every Ray process on the host, including other users' clusters."""
    port = _free_port()
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must stay < 108 bytes
    cmd = [str(RAY), "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(port),
           "--num-cpus", "2", "--resources", '{"mammo_test_head": 1}', "--object-store-memory", str(200 * 2**20),
           "--include-dashboard", "false", "--disable-usage-stats", "--temp-dir", temp_dir,
           "--dashboard-agent-listen-port", str(_free_port()), "--ray-client-server-port", str(_free_port())]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while not _ray_up(address):
            assert proc.poll() is None, "ray start --head exited"
            assert time.monotonic() < deadline, "Ray head node did not come up in 240 s"
            time.sleep(2)
        yield address
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        subprocess.run(["rm", "-rf", temp_dir], check=False)


@pytest.mark.slow  # ~3-5 min on a loaded 2-core host (head node start-up + one federated run)
def test_virtual_sites_run_on_an_existing_ray_cluster(tmp_path, tiny_model, ray_head):
    out = tmp_path / "run"
    proc = _sim(out, tiny_model, tmp_path / "cache", "--ray-address", ray_head,
                "--set", "experiment.methods=['federated']", "--set", "finetune.strategy='fedavgm'",
                "--set", "finetune.server_momentum=0.9", "--set", "flower.client_num_cpus=1")
    assert "Traceback" not in proc.stderr
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "done", record.get("grid", {}).get("failures")
    assert record["settings"]["flower"]["ray_address"] == ray_head
    job = next(j for j in record["grid"]["jobs"] if j["method"] == "federated")
    assert job["ray"]["address"] == ray_head
    assert job["ray"]["cluster_resources"].get("mammo_test_head") == 1.0  # the head node's marker: that cluster
    assert job["ray"]["client_resources"] == {"num_cpus": 1.0, "num_gpus": 0.0}
    rounds = pd.read_csv(out / "federated" / "seed0_n7_k2" / "metrics.csv")
    assert list(rounds["round"]) == [1, 2] and (rounds["sites"] == 2).all()
    assert _ray_up(ray_head)  # the simulation disconnected; the lab's cluster is still up
