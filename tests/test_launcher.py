"""The pre-started flwr-clientapp: the shim Flower's SuperExec runs hands its arguments and stdio to the
launcher, whose forked child runs Flower's own entry point; without a launcher the shim runs the real
binary."""

from __future__ import annotations

import subprocess
import time

import pytest

from mammo_fl.client.channel import socket_path
from mammo_fl.client.launcher import write_shim
from mammo_fl.client.worker_process import ClientAppLauncher
from mammo_fl.common.federation.processes import flower_env

START_S = 300  # the launcher imports Flower before it listens: slow on a loaded 2-core box


def test_shim_runs_flowers_entry_point_in_the_launcher_and_returns_its_status(tmp_path):
    launcher = ClientAppLauncher(socket_path(tmp_path / "state", "launcher.sock"), tmp_path / "launcher.log",
                                 flower_env(tmp_path / "home"))
    shim = write_shim(tmp_path / "bin", launcher.socket_path, "/bin/false")
    assert shim.name == "flwr-clientapp" and (shim.stat().st_mode & 0o777) == 0o700
    launcher.start()
    try:
        deadline = time.monotonic() + START_S
        while not launcher.socket_path.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert (launcher.socket_path.stat().st_mode & 0o777) == 0o600
        ok = subprocess.run([str(shim), "--help"], capture_output=True, text=True, timeout=120)
        assert ok.returncode == 0 and ok.stdout.startswith("usage: flwr-clientapp"), ok
        assert "--runtime-api-address" in ok.stdout
        bad = subprocess.run([str(shim), "--no-such-flag"], capture_output=True, text=True, timeout=120)
        assert bad.returncode == 2 and "flwr-clientapp: error" in bad.stderr  # argparse, on the shim's stderr
    finally:
        launcher.stop()
    # no launcher: the shim runs the real binary (here a stand-in) with the same arguments
    fallback = write_shim(tmp_path / "bin2", launcher.socket_path, "/bin/echo")
    out = subprocess.run([str(fallback), "--token", "abc"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "--token abc"


def test_launcher_tasks_run_behind_the_app_guard(tmp_path, monkeypatch, task_identity):
    """The launcher installs the site's app guard once; every forked task inherits it: an unapproved
    bundle is refused before Flower installs anything, the release's own bundle goes through."""
    import hashlib
    from types import SimpleNamespace

    import flwr.supernode.runtime.run_clientapp as runtime
    from flwr.app import ConfigRecord, Context, Message, RecordDict

    from mammo_fl.client.app_guard import AppRefused
    from mammo_fl.client.audit import APP_SHA256_ENV
    from mammo_fl.client.launcher import warm_up
    from mammo_fl.common.federation.app_bundle import build_app_bundle, installed_app_sha256
    from mammo_fl.common.federation.flower_private import run_flwr_clientapp

    monkeypatch.delenv(APP_SHA256_ENV, raising=False)
    state = tmp_path / "state"
    installed: list[bytes] = []
    task = {"fab": None}

    def pull(client):  # what Flower's Runtime API would hand the task
        message = Message(RecordDict({"config": ConfigRecord({"server-round": 1})}), 9, "train")
        context = Context(run_id=3, node_id=9, node_config={"site": "site-1", "state-dir": str(state)},
                          state=RecordDict(), run_config={})
        return message, context, None, task["fab"]

    monkeypatch.setattr(runtime, "pull_task_input", pull)
    monkeypatch.setattr(runtime, "install_from_fab", lambda fab, *a, **k: installed.append(fab))
    assert warm_up() is run_flwr_clientapp
    evil = b"not this site's app"
    task["fab"] = SimpleNamespace(hash_str=hashlib.sha256(evil).hexdigest())
    runtime.pull_task_input(None)
    with pytest.raises(AppRefused):
        runtime.install_from_fab(evil)
    assert installed == [] and "refused app bundle" in (state / "client.log").read_text()
    good = build_app_bundle()
    task["fab"] = SimpleNamespace(hash_str=installed_app_sha256())
    runtime.pull_task_input(None)
    runtime.install_from_fab(good)
    assert installed == [good]


def test_supernode_runs_every_task_behind_the_guard(tmp_path):
    """mammo-client's SuperNode PATH: the launcher's shim first, whose fallback is the app guard script;
    with --cold-clientapp the guard itself. A shim without its launcher still answers as flwr-clientapp."""
    import os
    import shutil

    from mammo_fl.client.cli import GUARD_DIR, supernode_env
    from mammo_fl.client.launcher import SHIM_NAME

    state = tmp_path / "state"
    launcher = ClientAppLauncher(socket_path(state, "launcher.sock"), tmp_path / "launcher.log", {})
    env = supernode_env(state, launcher)
    shim = shutil.which(SHIM_NAME, path=env["PATH"])
    guard = state / GUARD_DIR / SHIM_NAME
    assert shim == str(state / "bin" / SHIM_NAME) and repr(str(guard)) in open(shim).read()
    assert env["PATH"].split(os.pathsep)[0] == str(state / "bin")
    out = subprocess.run([shim, "--help"], capture_output=True, text=True, timeout=START_S, env=env)
    assert out.returncode == 0 and "--runtime-api-address" in out.stdout  # via the guard: no launcher running
    cold = supernode_env(state, None)
    assert shutil.which(SHIM_NAME, path=cold["PATH"]) == str(guard)
