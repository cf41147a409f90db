"""Federation overhead on loopback: mammo-server/mammo-client vs raw Flower, same payload.

Measured side by side in one run, both with 2 SuperNodes and the same SuperLink settings:
- mammo: per-round overhead = the round's wall time (its one exchange: evaluation of the received
  model + training at every site, then aggregation and checkpoint, up to the next round's start)
  minus the slowest site's own compute (evaluation + training); bytes sent to / received from each
  site per round (RUNDIR/metrics.json);
- raw Flower: a minimal ServerApp/ClientApp that only echoes arrays of the same size
  (benchmarks/federation_echo_app): its whole round time is overhead.
Figures are medians over the rounds; `--json FILE` also writes them (with the load average).

    python benchmarks/bench_federation.py --model resnet50 --rounds 3 --json out.json
    python benchmarks/bench_federation.py --model tiny --wire int8     # quick plumbing check
    python benchmarks/bench_federation.py --model tiny --cold-clientapp   # without the pre-started clientapp
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from mammo_fl.common.federation.processes import (  # noqa: E402
    flower_binary,
    flower_env,
    free_port,
    start_daemon,
    stop_daemon,
    wait_healthy,
)
from mammo_fl.common.federation.wire import WIRE_DTYPES  # noqa: E402

MODELS = {
    # trunk resnet50 + a 1-block top: ~24 M parameters, ~95 MB of float32 weights
    "resnet50": {"trunk": "resnet50", "top": {"type": "vgg", "blocks": [[64, 1]]}, "num_classes": 2},
    # trunk resnet18: ~11 M parameters, ~45 MB (a quicker look at size-dependent costs)
    "resnet18": {"trunk": "resnet18", "top": {"type": "vgg", "blocks": [[64, 1]]}, "num_classes": 2},
    "tiny": {"trunk": "resnet_tiny", "top": {"type": "vgg", "blocks": [[16, 1]]}, "num_classes": 2},
}


def make_model(path: Path, spec: dict) -> int:
    import torch

    from mammo_fl.common.models.checkpoint import save_checkpoint
    from mammo_fl.common.models import build_model

    torch.manual_seed(0)
    model = build_model("whole_image", spec)
    save_checkpoint(path, model, kind="whole_image", model_spec=spec,
                    preprocessing={"height": 96, "width": 64, "mode": "paper", "mean": 44.4},
                    class_names=["not_malignant", "malignant"])
    return sum(v.numel() * v.element_size() for v in model.state_dict().values())


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def run_mammo(work: Path, model: Path, sites: list[Path], rounds: int, wire: str, cold: bool) -> dict:
    address = f"127.0.0.1:{free_port()}"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    bin_dir = Path(sys.executable).parent
    clients = [
        # the tests' site policy: the small synthetic sites evaluate (histograms from 1 patient per class)
        subprocess.Popen([str(bin_dir / "mammo-client"), "--site", s.name, "--data", str(s), "--server", address,
                          "--insecure", "--cache-workers", "1", "--num-threads", "1",
                          "--config", str(ROOT / "tests" / "site_small.toml"),
                          *(["--cold-clientapp"] if cold else [])],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        for s in sites
    ]
    t0 = time.monotonic()
    try:
        rc = subprocess.run(
            [str(bin_dir / "mammo-server"), "--model", str(model), "--rounds", str(rounds), "--min-sites",
             str(len(sites)), "--out", str(work / "run"), "--address", address, "--insecure",
             "--set", "max-steps=1", "--set", "evaluate-initial=false", "--set", "val-fraction=0.3",
             "--set", "num-threads=1", "--set", "batch-size=2", "--set", f"wire-dtype={wire}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, timeout=3600,
        )
        if rc.returncode != 0:
            raise SystemExit(f"mammo-server failed: {rc.stderr.strip()}")
    finally:
        for c in clients:
            c.terminate()
        for c in clients:
            c.wait(timeout=60)
    rows = json.loads((work / "run" / "metrics.json").read_text())
    return {"wall": time.monotonic() - t0, "rows": rows}


def run_echo(work: Path, model: Path, n_sites: int, rounds: int) -> dict:
    address = f"127.0.0.1:{free_port()}"
    home = work / "echo-home"
    env = flower_env(home)
    state = work / "echo-superlink"
    state.mkdir(parents=True, exist_ok=True)
    link = start_daemon([sys.executable, "-m", "mammo_fl.server.superlink_launch", "--insecure", "--host", "127.0.0.1",
                         "--port", address.rsplit(":", 1)[1], "--database", str(state / "state.db"),
                         "--disable-runtime-dependency-installation"], env, state / "superlink.log")
    nodes = []
    t0 = time.monotonic()
    try:
        wait_healthy(address, insecure=True, timeout_s=300, proc=link)
        home.mkdir(parents=True, exist_ok=True)
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "bench"\n\n[superlink.bench]\naddress = "{address}"\ninsecure = true\n')
        for i in range(n_sites):
            node_env = flower_env(work / f"echo-node-{i}")
            nodes.append(start_daemon([flower_binary("flower-supernode"), "--insecure", "--superlink", address,
                                       "--port", str(free_port())], node_env, work / f"echo-node-{i}.log"))
        out = work / "echo.json"
        log = work / "echo-flwr-run.log"
        with open(log, "wb") as fh:
            subprocess.run([flower_binary("flwr"), "run", str(ROOT / "benchmarks" / "federation_echo_app"), "bench",
                            "--run-config", f"model='{model}' out='{out}' rounds={rounds} min-sites={n_sites}",
                            "--stream"], env=env, stdout=fh, stderr=subprocess.STDOUT, timeout=3600, check=True)
        if not out.exists():
            tail = log.read_text(errors="replace").strip().splitlines()[-15:]
            raise SystemExit("raw Flower echo run failed:\n" + "\n".join(tail))
        return {"wall": time.monotonic() - t0, "rows": json.loads(out.read_text())}
    finally:
        for n in nodes:
            stop_daemon(n)
        stop_daemon(link)


def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else math.nan


def load_average() -> float:
    return float(os.getloadavg()[0])


def summarise(model_bytes: int, echo: dict, mammo: dict, wire: str, cold: bool, loads: list[float]) -> dict:
    rows = [r for r in mammo["rows"] if r["round"] >= 1]
    echo_s = median([r["seconds"] for r in echo["rows"]])
    over = median([r["overhead_seconds"] for r in rows if r.get("overhead_seconds") is not None])
    return {
        "model_bytes": model_bytes,
        "rounds": len(rows),
        "mammo_round_overhead_s": round(over, 2),
        "raw_flower_round_s": round(echo_s, 2),
        "overhead_ratio": round(over / echo_s, 3),
        "bytes_down_per_site_round": median([r["bytes_down_per_site"] for r in rows]),
        "bytes_up_per_site_round": median([r["bytes_up_per_site"] for r in rows]),
        "wire": wire,
        "clientapp": "cold (one flwr-clientapp process per message)" if cold else "pre-started launcher",
        "load_average_1min": [round(x, 1) for x in loads],
        "per_round": [{"round": r["round"], "echo_s": round(e["seconds"], 2), "mammo_round_s": r.get("round_seconds"),
                       "mammo_site_compute_s": r.get("max_site_seconds"), "mammo_overhead_s": r.get("overhead_seconds"),
                       "bytes_down_per_site": r["bytes_down_per_site"], "bytes_up_per_site": r["bytes_up_per_site"]}
                      for e, r in zip(echo["rows"], rows, strict=False)],
        "wall_s": {"mammo": round(mammo["wall"], 1), "echo": round(echo["wall"], 1)},
    }


def print_table(args: argparse.Namespace, nbytes: int, out: dict) -> None:
    print(f"model {args.model}: {nbytes / 1e6:.1f} MB of weights, 2 sites, {args.rounds} rounds, loopback, CPU, "
          f"wire {out['wire']}, clientapp {out['clientapp']}, load average {out['load_average_1min']}")
    print(f"{'round':>5} | {'raw Flower echo s':>17} | {'mammo round s':>13} {'site compute s':>14} "
          f"{'overhead s':>10} | {'MB to site':>10} {'MB from site':>12}")
    for r in out["per_round"]:
        print(f"{r['round']:>5} | {r['echo_s']:>17.1f} | {_f(r['mammo_round_s']):>13} "
              f"{_f(r['mammo_site_compute_s']):>14} {_f(r['mammo_overhead_s']):>10} | "
              f"{r['bytes_down_per_site'] / 1e6:>10.1f} {r['bytes_up_per_site'] / 1e6:>12.1f}")
    print(f"median per-round overhead: mammo {out['mammo_round_overhead_s']:.1f} s vs raw Flower "
          f"{out['raw_flower_round_s']:.1f} s (ratio {out['overhead_ratio']:.2f}); bytes per site per round "
          f"{(out['bytes_down_per_site_round'] + out['bytes_up_per_site_round']) / nbytes:.2f}x the fp32 model; "
          f"wall: mammo {out['wall_s']['mammo']:.0f} s, echo {out['wall_s']['echo']:.0f} s; "
          f"peak child RSS {peak_rss_mb():.0f} MB")


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=sorted(MODELS), default="resnet50")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--patients", type=int, default=8, help="synthetic patients per site")
    ap.add_argument("--wire", choices=WIRE_DTYPES, default="fp16", help="mammo's wire-dtype")
    ap.add_argument("--cold-clientapp", action="store_true",
                    help="mammo-client without its pre-started flwr-clientapp (measures the alternative)")
    ap.add_argument("--json", type=Path, default=None, help="also write the medians here")
    args = ap.parse_args()
    from federation_support import make_sites

    loads = [load_average()]
    with tempfile.TemporaryDirectory(prefix="bench-fed-") as tmp:
        work = Path(tmp)
        nbytes = make_model(work / "init.pt", MODELS[args.model])
        sites = make_sites(work / "sites", sites=2, patients=2 * args.patients, seed=5)
        echo = run_echo(work, work / "init.pt", len(sites), args.rounds)
        loads.append(load_average())
        mammo = run_mammo(work, work / "init.pt", sites, args.rounds, args.wire, args.cold_clientapp)
        loads.append(load_average())
    out = summarise(nbytes, echo, mammo, args.wire, args.cold_clientapp, loads)
    print_table(args, nbytes, out)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
