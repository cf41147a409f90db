"""Helpers for the federation tests: synthetic sites, a tiny checkpoint, real mammo-server /
mammo-client processes on loopback, and waiting on the run folder's events."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from mammo_fl.common.federation.processes import _die_with_parent, stop_daemon

TINY_SPEC = {"trunk": "resnet_tiny", "top": {"type": "vgg", "blocks": [[16, 1]]}, "num_classes": 2}
PREPROCESSING = {"height": 96, "width": 64, "mode": "paper", "mean": 44.4}
RAW_SIZE = (256, 208)  # DICOM size (the reader rejects < 200 px); the model sees 96x64
# Run settings that keep a round to a few seconds of compute per site.
FAST = [
    "max-steps=2", "batch-size=4", "evaluate-initial=false", "val-fraction=0.3", "site-wait-timeout=240",
    "round-timeout=900", "round-retries=1", "num-threads=1", "lr=1e-3",
]
BIN = Path(sys.executable).parent
# Real daemons and one process per Flower message: minutes on a loaded 2-core machine.
E2E_TIMEOUT_S = 1800


def make_sites(out: Path, sites: int, patients: int, seed: int = 1) -> list[Path]:
    """Synthetic manifest-layout sites (prevalence 0.5 so every validation split has both classes)."""
    from mammo_fl.common.synth import generate_dataset

    root = generate_dataset("manifest", out, patients=patients, seed=seed, sites=sites, size=RAW_SIZE,
                            prevalence=0.5, workers=1, overwrite=True)
    return sorted(p for p in Path(root).iterdir() if p.is_dir())


def copy_site(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".mammo-fl"))
    return dst


def make_checkpoint(path: Path, seed: int = 0) -> Path:
    import torch

    from mammo_fl.common.models.checkpoint import save_checkpoint
    from mammo_fl.common.models import build_model

    torch.manual_seed(seed)
    model = build_model("whole_image", TINY_SPEC)
    save_checkpoint(path, model, kind="whole_image", model_spec=TINY_SPEC, preprocessing=PREPROCESSING,
                    class_names=["not_malignant", "malignant"])
    return path


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


SMALL_SITE_CONFIG = Path(__file__).with_name("site_small.toml")  # test sites are small: evaluate anyway


def start_client(site: Path, server: str, log: Path, *extra: str, name: str | None = None,
                 security: tuple[str, ...] = ("--insecure",), config: Path | None = SMALL_SITE_CONFIG) -> subprocess.Popen:
    """mammo-client for `site`; `security` = ("--ca", CA, "--key", KEY) for a deployed coordinator;
    `config` = the site policy file (None: the defaults of common/presets/site.toml)."""
    policy = ["--config", str(config)] if config is not None else []
    cmd = [str(BIN / "mammo-client"), "--site", name or site.name, "--data", str(site), "--server", server,
           *security, *policy, "--cache-workers", "1", "--num-threads", "1", *extra]
    with open(log, "ab") as fh:
        return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=_env(), preexec_fn=_die_with_parent)


def start_server(model: Path, out: Path, address: str, rounds: int, min_sites: int, log: Path,
                 settings: list[str], resume: bool = False,
                 security: tuple[str, ...] = ("--insecure",)) -> subprocess.Popen:
    """mammo-server; `security` = ("--home", HOME) for a deployed coordinator (TLS, keys, proxy)."""
    cmd = [str(BIN / "mammo-server"), "--model", str(model), "--rounds", str(rounds), "--min-sites", str(min_sites),
           "--out", str(out), "--address", address, *security]
    for item in settings:
        cmd += ["--set", item]
    if resume:
        cmd.append("--resume")
    with open(log, "ab") as fh:
        # Own process group (the resume test kills it whole); dies with pytest all the same.
        return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=_env(), start_new_session=True,
                                preexec_fn=_die_with_parent)


def stop(proc: subprocess.Popen | None) -> None:
    """Graceful stop of a wrapper (it stops its Flower daemons and their helpers)."""
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            stop_daemon(proc, grace_s=1)


def events(rundir: Path) -> list[dict[str, Any]]:
    path = rundir / "events.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_for(predicate, timeout_s: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited ({proc.returncode}) while waiting for {what}")
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def wait_exit(proc: subprocess.Popen, timeout_s: float, log: Path) -> int:
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        stop(proc)
        raise AssertionError(f"server did not finish in {timeout_s:.0f} s; log:\n{log.read_text()[-3000:]}") from None
