"""What deployment security costs per round: TLS + SuperNode auth + nginx vs the loopback lab mode.

The same model, the same two synthetic sites and the same settings, run twice in one go:
`mammo-server --insecure` (plain HTTP, SuperLink on the port) and `mammo-server --home`
(TLS SuperLink on loopback, nginx on the public port re-encrypting to it, signed node requests,
the app guard at each site). Prints per-round wall time and overhead (train exchange minus the
slowest site's local work) from RUNDIR/metrics.csv, and their medians.

    python benchmarks/bench_deploy.py                    # tiny model, 3 rounds
    python benchmarks/bench_deploy.py --model resnet50   # ~95 MB of weights through the proxy
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_federation import MODELS, make_model  # noqa: E402

from mammo_fl.common.federation.processes import free_port  # noqa: E402

BIN = Path(sys.executable).parent
SETTINGS = ["max-steps=1", "evaluate-initial=false", "val-fraction=0.3", "num-threads=1", "batch-size=2"]


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=True, **kw)


def run_mode(work: Path, model: Path, sites: list[Path], rounds: int, secure: bool) -> list[dict]:
    address = f"127.0.0.1:{free_port()}"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    home = work / "home"
    server_security, client_security = ["--insecure"], {s.name: ["--insecure"] for s in sites}
    if secure:
        _run([str(BIN / "mammo-server"), "init", "--home", str(home), "--host", "127.0.0.1"])
        for s in sites:
            _run([str(BIN / "mammo-client"), "keygen", "--site", s.name, "--out", str(work / "keys")])
            _run([str(BIN / "mammo-server"), "sites", "add", s.name, str(work / "keys" / f"{s.name}.pub"),
                  "--home", str(home)])
            client_security[s.name] = ["--ca", str(home / "ca.pem"), "--key", str(work / "keys" / f"{s.name}.key")]
        server_security = ["--home", str(home)]
    tag = "tls" if secure else "lab"
    clients = [subprocess.Popen([str(BIN / "mammo-client"), "--site", s.name, "--data", str(s), "--server", address,
                                 "--state-dir", str(work / f"state-{tag}-{s.name}"), *client_security[s.name],
                                 "--cache-workers", "1", "--num-threads", "1"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env) for s in sites]
    out = work / f"run-{tag}"
    cmd = [str(BIN / "mammo-server"), "--model", str(model), "--rounds", str(rounds), "--min-sites", str(len(sites)),
           "--out", str(out), "--address", address, *server_security]
    for item in SETTINGS:
        cmd += ["--set", item]
    try:
        done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                              timeout=3600)
        if done.returncode != 0:
            raise SystemExit(f"mammo-server ({tag}) failed: {done.stderr.strip()}")
    finally:
        for c in clients:
            c.terminate()
        for c in clients:
            c.wait(timeout=60)
    return json.loads((out / "metrics.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=sorted(MODELS), default="tiny")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    from federation_support import make_sites

    with tempfile.TemporaryDirectory(prefix="bench-deploy-") as tmp:
        work = Path(tmp)
        nbytes = make_model(work / "init.pt", MODELS[args.model])
        sites = make_sites(work / "sites", sites=2, patients=16, seed=5)
        t0 = time.monotonic()
        lab = run_mode(work, work / "init.pt", sites, args.rounds, secure=False)
        t1 = time.monotonic()
        tls = run_mode(work, work / "init.pt", sites, args.rounds, secure=True)
        t2 = time.monotonic()

    print(f"model {args.model}: {nbytes / 1e6:.1f} MB of weights, 2 sites, {args.rounds} rounds, loopback, CPU; "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{'round':>5} | {'lab round s':>11} {'lab overhead s':>14} | {'TLS+proxy round s':>17} "
          f"{'TLS+proxy overhead s':>20}")
    for a, b in zip(lab, tls, strict=False):
        print(f"{a['round']:>5} | {a['round_seconds']:>11.1f} {a['overhead_seconds']:>14.1f} | "
              f"{b['round_seconds']:>17.1f} {b['overhead_seconds']:>20.1f}")
    med = {name: (statistics.median(r["round_seconds"] for r in rows),
                  statistics.median(r["overhead_seconds"] for r in rows)) for name, rows in (("lab", lab), ("tls", tls))}
    print(f"median round: lab {med['lab'][0]:.1f} s, TLS+proxy {med['tls'][0]:.1f} s; median overhead: lab "
          f"{med['lab'][1]:.1f} s, TLS+proxy {med['tls'][1]:.1f} s; wall: lab {t1 - t0:.0f} s, TLS+proxy {t2 - t1:.0f} s")


if __name__ == "__main__":
    main()
