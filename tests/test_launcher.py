"""The pre-started flwr-clientapp: the shim Flower's SuperExec runs hands its arguments and stdio to the
launcher, whose forked child runs Flower's own entry point; without a launcher the shim runs the real
binary."""

from __future__ import annotations

import subprocess
import time

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
