"""Synthetic mammogram generator: speed, output size, memory, and lesion-signal check, side by side.

    python benchmarks/bench_synth.py                       # ~1-2 min on 2 cores
    python benchmarks/bench_synth.py --patients 100 --signal-patients 115 --signal-size 576x448

Prints, per run: images/s for render only and render+write (1 and N workers) at 1152x896,
MB written per image, peak RSS; then the cross-validated AUC of whole-image statistics
(should be near chance) next to the AUC of ROI shape/texture features (should be high).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mammo_fl.common.synth import generate_dataset, render_image  # noqa: E402
from mammo_fl.common.synth.checks import lesion_signal_report  # noqa: E402
from mammo_fl.common.synth.generate import SynthConfig, plan  # noqa: E402
from mammo_fl.common.synth.plan import PlanOptions, plan_inbreast  # noqa: E402
from mammo_fl.common.synth.profiles import PROFILES  # noqa: E402


def _size(text: str) -> tuple[int, int]:
    h, w = text.lower().split("x")
    return int(h), int(w)


def _peak_mb() -> tuple[float, float]:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return own, children


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (spawned workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def bench_speed(layout: str, patients: int, size: tuple[int, int], workers: list[int]) -> None:
    cfg = SynthConfig(layout, Path("unused"), patients, seed=1, size=size).validate()
    specs = plan(cfg)
    n = len(specs)
    print(f"\n## generation speed: {layout}, {patients} patients = {n} images at {size[0]}x{size[1]}")
    per_image = float("nan")
    print(f"{'mode':<28}{'images':>8}{'seconds':>10}{'img/s':>9}{'MB/img':>9}{'cpu s/img':>11}")
    start, cpu = time.perf_counter(), _cpu_seconds()
    for spec in specs:
        render_image(spec)
    wall, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
    print(f"{'render only, 1 process':<28}{n:>8}{wall:>10.1f}{n / wall:>9.2f}{'-':>9}{cpu / n:>11.3f}")
    for w in workers:
        out = Path(tempfile.mkdtemp(prefix="bench_synth_"))
        try:
            start, cpu = time.perf_counter(), _cpu_seconds()
            generate_dataset(layout, out / "ds", patients, 1, size=size, workers=w)
            wall, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
            mb = sum(p.stat().st_size for p in (out / "ds").rglob("*") if p.is_file()) / 1e6
            print(f"{f'render + write DICOM, {w} proc':<28}{n:>8}{wall:>10.1f}{n / wall:>9.2f}{mb / n:>9.2f}"
                  f"{cpu / n:>11.3f}")
            per_image = min(per_image, cpu / n) if per_image == per_image else cpu / n  # nan-safe
        finally:
            shutil.rmtree(out, ignore_errors=True)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    print(f"load average {os.getloadavg()[0]:.1f} on {cores} cores (wall figures include other users' load); "
          f"projection from the cheapest CPU s/img on {cores} idle cores: {cores / per_image:.1f} img/s "
          f"= {300 * per_image / cores / 60:.1f} min for 300 images")
    own, children = _peak_mb()
    print(f"peak RSS: main {own:.0f} MB, largest worker {children:.0f} MB")


def bench_signal(patients: int, size: tuple[int, int]) -> None:
    specs = plan_inbreast(patients, PlanOptions(size[0], size[1], seed=3, prevalence=0.5), PROFILES["siemens-mammomat"])
    start = time.perf_counter()
    report = lesion_signal_report([render_image(s) for s in specs])
    print(f"\n## lesion signal ({patients} patients, {report.n_images} images, {report.n_rois} ROIs at "
          f"{size[0]}x{size[1]}; logistic regression, patient-grouped 5-fold CV)")
    print(f"{'features':<52}{'target':<26}{'AUC':>6}")
    print(f"{'whole-image mean/std/percentiles/16-bin histogram':<52}{'malignant image vs rest':<26}"
          f"{report.image_stat_auc:>6.3f}   (want <= ~0.65)")
    print(f"{'ROI solidity/circularity/specks/texture':<52}{'malignant vs benign ROI':<26}"
          f"{report.roi_auc:>6.3f}   (want >= 0.85)")
    print(f"({time.perf_counter() - start:.1f} s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layout", default="inbreast", choices=["inbreast", "cbis-ddsm", "manifest"])
    ap.add_argument("--patients", type=int, default=6, help="patients for the speed runs (~3.6 images each)")
    ap.add_argument("--size", type=_size, default=(1152, 896), help="speed-run image size HxW")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--signal-patients", type=int, default=50)
    ap.add_argument("--signal-size", type=_size, default=(288, 224))
    args = ap.parse_args()
    bench_speed(args.layout, args.patients, args.size, args.workers)
    bench_signal(args.signal_patients, args.signal_size)


if __name__ == "__main__":
    main()
