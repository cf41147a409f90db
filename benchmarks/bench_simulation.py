"""Where the wall time of mammo-sim goes: Flower/Ray start-up and messaging vs. training.

Default (short, < 2 min on 2 cores): a tiny whole-image model on a small synthetic
INbreast-like dataset; one pooled fine-tuning and one federated fine-tuning (2 sites,
2 rounds) with the same total epochs, through the real Flower Simulation Engine.

    python benchmarks/bench_simulation.py                 # short run
    python benchmarks/bench_simulation.py --quick         # the `quick` preset end to end (~10+ min)
    python benchmarks/bench_simulation.py --from-run DIR  # analyse an existing mammo-sim output folder
    python benchmarks/bench_simulation.py --sites 2,5,10,20 [--patients 72 --rounds 2 --plot docs/sim_scaling.png]
        # cost as sites grow: one federated run per K at a fixed total of patients (sim_scaling.py)

Figures printed side by side: total wall time, Ray start-up, Flower simulation time,
summed round time, slowest site's training per round, per-round overhead (messaging,
ClientApp set-up, federated evaluation), and the share of the federated wall time that is
not training.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _fed_rows(run_json: dict) -> list[dict]:
    return [j for j in run_json.get("grid", {}).get("jobs", []) if j.get("method") == "federated"]


def report(out_dir: Path, wall: float | None = None) -> None:
    record = json.loads((out_dir / "run.json").read_text())
    timings = record.get("timings", {})
    jobs = record.get("grid", {}).get("jobs", [])
    fed = _fed_rows(record)
    total = wall if wall is not None else float(timings.get("total", 0.0))
    by_method: dict[str, float] = {}
    for job in jobs:
        by_method[job["method"]] = by_method.get(job["method"], 0.0) + float(job.get("seconds", 0.0))
    print(f"\nmammo-sim timing ({out_dir})")
    print(f"{'phase':<38}{'seconds':>10}{'share':>9}")
    rows = [("source model (build or cache)", timings.get("source_model", 0.0)),
            ("target data + image cache", timings.get("target_data", 0.0))]
    rows += [(f"grid: {m} jobs", s) for m, s in sorted(by_method.items())]
    for name, secs in rows:
        print(f"{name:<38}{secs:>10.1f}{(secs / total if total else 0):>9.1%}")
    print(f"{'total wall':<38}{total:>10.1f}")
    if not fed:
        return
    ray_init = sum(float(j.get("ray_init_seconds", 0.0)) for j in fed)
    sim = sum(float(j.get("simulation_seconds", 0.0)) for j in fed)
    rounds = sum(float(j.get("round_seconds", 0.0)) for j in fed)
    train = sum(float(j.get("max_site_train_seconds", 0.0)) for j in fed)
    evaluate = sum(float(j.get("evaluate_seconds", 0.0)) for j in fed)
    queue = sum(_queue_seconds(j, _slots(record, j)) for j in fed)
    job_total = sum(float(j.get("seconds", 0.0)) for j in fed)
    startup = max(0.0, sim - rounds - ray_init)
    print(f"\nfederated runs: {len(fed)}")
    print(f"{'':<44}{'seconds':>10}{'of fed wall':>12}")
    for name, secs in (("federated jobs wall (incl. scoring)", job_total), ("  Flower simulation", sim),
                       ("    Ray init (ray.init)", ray_init),
                       ("    Flower start-up + shutdown", startup),
                       ("    rounds (train + evaluate)", rounds),
                       ("      slowest site's training", train),
                       ("      sites waiting for a CPU slot", queue),
                       ("      federated evaluation exchange", evaluate),
                       ("      rest (messaging, ClientApp set-up)", rounds - train - queue - evaluate)):
        print(f"{name:<44}{secs:>10.1f}{(secs / job_total if job_total else 0):>12.1%}")
    if job_total:
        print(f"share of federated wall time not spent training: {1 - (train + queue) / job_total:.1%}")


def _slots(record: dict, job: dict) -> int:
    """Virtual sites that can train at once: Ray's CPUs / CPUs per site (GPU runs: all sites)."""
    flower = record.get("settings", {}).get("flower", {})
    k = int(job.get("k_sites", 1)) or 1
    if record.get("device", "cpu") != "cpu":
        return k
    per_site = float(flower.get("client_num_cpus", 1)) or 1.0
    return max(1, min(k, int(float(flower.get("ray_num_cpus", k)) // per_site)))


def _queue_seconds(job: dict, slots: int) -> float:
    """Training time lost to too few slots: the exchange takes >= sum/slots, not the slowest site alone.

    A lower bound computed from the per-round sums (older runs without them count 0).
    """
    total = float(job.get("sum_site_train_seconds", 0.0))
    slowest = float(job.get("max_site_train_seconds", 0.0))
    return max(0.0, total / slots - slowest) if total else 0.0


def _tiny_inputs(work: Path, patients: int = 20) -> tuple[Path, Path]:
    """A tiny whole-image checkpoint and a small synthetic INbreast-like release folder."""
    import torch

    from mammo_fl.common.models.checkpoint import save_checkpoint
    from mammo_fl.common.models import build_model
    from mammo_fl.common.synth import generate_dataset

    spec = {"trunk": "resnet_tiny", "top": {"type": "resnet", "blocks": [[16, 16, 64, 1]]}, "num_classes": 2,
            "dropout": 0.0}
    torch.manual_seed(0)
    model = build_model("whole_image", spec)
    ckpt = work / "tiny.pt"
    save_checkpoint(ckpt, model, kind="whole_image", model_spec=spec,
                    preprocessing={"height": 128, "width": 96, "mode": "paper", "mean": 40.0},
                    class_names=["not_malignant", "malignant"])
    data = generate_dataset("inbreast", work / "inbreast", patients, 5, size=(320, 256), prevalence=0.5)
    return ckpt, data


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="run the quick preset end to end")
    mode.add_argument("--from-run", type=Path, help="analyse an existing mammo-sim output folder")
    mode.add_argument("--sites", help="comma-separated K: wall time and peak memory of one federated run per K")
    parser.add_argument("--patients", type=int, default=72, help="--sites: total training patients (fixed over K)")
    parser.add_argument("--rounds", type=int, default=2, help="--sites: federated rounds")
    parser.add_argument("--local-epochs", type=int, default=1, help="--sites: local epochs per round")
    parser.add_argument("--plot", type=Path, default=None, help="--sites: write the scaling plot here")
    parser.add_argument("--tiny", action="store_true",
                        help="--sites: a tiny model on small synthetic data (isolates the per-site framework cost; "
                        "minutes) instead of the quick preset's source model and target")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="--sites: extra mammo-sim --set overrides (repeatable)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: a temporary one)")
    args = parser.parse_args()
    if args.from_run:
        report(args.from_run)
        return 0
    if args.sites:
        return _scaling(args)
    work = args.out or Path(tempfile.mkdtemp(prefix="bench_sim_"))
    work.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "mammo_fl.simulations.cli", "--out", str(work / "run")]
    if args.quick:
        cmd += ["--preset", "quick"]
    else:
        t0 = time.perf_counter()
        ckpt, data = _tiny_inputs(work)
        print(f"prepared tiny inputs in {time.perf_counter() - t0:.1f} s")
        cmd += ["--preset", "quick", "--model", str(ckpt), "--inbreast", str(data), "--cache-dir", str(work / "cache"),
                "--set", "experiment.sizes=[12]", "--set", "experiment.k_sites=[2]",
                "--set", "experiment.methods=['pooled','federated']", "--set", "finetune.rounds=2",
                "--set", "finetune.local_epochs=1", "--set", "finetune.batch_size=4"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-3000:])
        return proc.returncode
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    report(work / "run", wall)
    print(f"peak RSS of the largest child process: {peak_mb:.0f} MB")
    return 0


def _scaling(args: argparse.Namespace) -> int:
    from sim_scaling import format_report, plot, run_scaling

    ks = sorted({int(k) for k in args.sites.split(",") if k.strip()})
    work = args.out or Path(tempfile.mkdtemp(prefix="bench_sites_"))
    work.mkdir(parents=True, exist_ok=True)
    extra = [item for o in args.overrides for item in ("--set", o)]
    if args.tiny:
        # enough patients that 70% of them fill `--patients` training patients and the 30% validation
        # patients can be dealt one or more to each of the largest K sites
        ckpt, data = _tiny_inputs(work, patients=max(int(args.patients / 0.7), int(max(ks) / 0.3)) + 4)
        extra = ["--model", str(ckpt), "--inbreast", str(data), "--cache-dir", str(work / "cache"),
                 "--set", "finetune.batch_size=4", *extra]
    rows = run_scaling(ks, args.patients, args.rounds, args.local_epochs, work, extra)
    print()
    print(format_report(rows))
    if args.plot:
        print(f"plot: {plot(rows, args.plot)}")
    print(f"rows: {work / 'scaling.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
