"""Training throughput and memory, measured side by side in one run.

(a) CPU preset size (288x224, the cpu preset's trunk + top, batch 8):
    full loop  = DataLoader over cached 16-bit PNGs + augmentation + train step, vs
    step alone = train step on a pre-loaded tensor batch (no data pipeline, no augmentation);
    images/s of each and the ratio (the data pipeline must not be the bottleneck: aim >= 0.95; the loop
    decodes and augments a batch ahead in a background thread, common/training/loops.Prefetcher).
    Variants: PNG decoding per step vs RAM-preloaded dataset; augmentation per batch on the device
    (what finetune / run_epoch do) vs per image inside the Dataset.
(b) Peak memory of one paper-preset training step (ResNet50 + [512-512-1024]x2, 1152x896, batch 2,
    all layers trainable): RSS growth of a fresh process (+ torch.cuda.max_memory_allocated on CUDA).
    With --paper-steps N > 1 the first step is a warm-up (cuDNN autotuning, allocator) and the
    paper-size throughput is timed over the other N-1 steps (images/s at batch 2, AMP on CUDA).

    python benchmarks/bench_train.py                 # (a) + (b), ~1-2 min on 2 free cores
    python benchmarks/bench_train.py --skip-paper    # (a) only
    python benchmarks/bench_train.py --images 160 --epochs 3 --threads 0 --device cuda --paper-steps 20
    python benchmarks/bench_train.py --skip-paper --json out.json   # {loop_images_per_s, step_images_per_s, ratio}
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

from mammo_fl.common.training.datasets import WholeImageDataset
from mammo_fl.common.utils.device import make_grad_scaler, seed_everything, select_device
from mammo_fl.common.training.loops import make_loader, run_epoch, set_trainable, trainable_parameters
from mammo_fl.common.pipeline.settings import load_run_settings


def preset_spec(preset: str) -> dict:
    """The whole-image model a `mammo-train` preset builds (trunk + its selected top)."""
    settings = load_run_settings(preset)
    return {"trunk": settings.patch_model.arch, "top": settings.whole_model.top_spec, "num_classes": 2, "dropout": 0.0}


HEADLINE = "full: PNG decode + batch aug on device"  # the loop finetune runs on data too big to preload
CPU_SPEC = preset_spec("cpu")      # resnet_tiny16 + [64-64-256]x1 x2
PAPER_SPEC = preset_spec("paper")  # resnet50 + [512-512-1024]x2


def rss_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def make_cached_dataset(workdir: Path, images: int, size: tuple[int, int]):
    """Synthetic manifest site (engineer B's generator) -> ImageCache PNGs, built once and reused
    from `workdir` (not timed)."""
    from mammo_fl.common.imaging.adapters.manifest import read_manifest
    from mammo_fl.common.imaging.cache import ImageCache
    from mammo_fl.common.imaging.geometry import PreprocessSettings
    from mammo_fl.common.synth import generate_dataset

    patients = max(2, (images + 3) // 4)
    root = workdir / f"synth-{patients}p-{size[0]}x{size[1]}"
    if not (root / "site-1" / "manifest.csv").is_file():
        generate_dataset("manifest", root, patients=patients, seed=0, sites=1, size=(size[0] * 2, size[1] * 2),
                         overwrite=True, workers=1)
    table = read_manifest(root / "site-1").head(images)
    cache = ImageCache(workdir / "cache", PreprocessSettings(size[0], size[1], "paper"))
    report = cache.build(table["image_path"].tolist(), workers=1, progress=False)
    if report.skipped:
        print(f"  skipped {len(report.skipped)} images: {report.skipped[:2]}")
    return table, cache


class FullLoop:
    """One epoch of run_epoch over a DataLoader (what finetune does) -> (images, seconds)."""

    def __init__(self, model, dataset, device, batch, workers, on_device_aug: bool) -> None:
        from mammo_fl.common.training.datasets import split_augmentation

        ds, self.augmenter = split_augmentation(dataset) if on_device_aug else (dataset, None)
        self.loader = make_loader(ds, batch, shuffle=True, seed=0, num_workers=workers, device=device, drop_last=True)
        self.model, self.device = model, device
        self.opt = torch.optim.Adam(trainable_parameters(model), lr=1e-5)
        self.scaler = make_grad_scaler(device)
        self.run(max_steps=2)  # warm-up

    def run(self, max_steps: int | None = None) -> tuple[int, float, float]:
        start, cpu = time.perf_counter(), time.process_time()
        stats = run_epoch(self.model, self.loader, self.opt, self.device, scaler=self.scaler,
                          augmenter=self.augmenter, max_steps=max_steps)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return stats.examples, time.perf_counter() - start, time.process_time() - cpu


class StepOnly:
    """run_epoch over pre-loaded device tensors (no decoding, no augmentation) -> (images, seconds)."""

    def __init__(self, model, x, y, device, steps) -> None:
        self.batches = [(x, y)] * steps
        self.model, self.device = model, device
        self.opt = torch.optim.Adam(trainable_parameters(model), lr=1e-5)
        self.scaler = make_grad_scaler(device)
        run_epoch(model, self.batches[:2], self.opt, device, scaler=self.scaler)  # warm-up

    def run(self) -> tuple[int, float, float]:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        start, cpu = time.perf_counter(), time.process_time()
        stats = run_epoch(self.model, self.batches, self.opt, self.device, scaler=self.scaler)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return stats.examples, time.perf_counter() - start, time.process_time() - cpu


def bench_throughput(args: argparse.Namespace, device: torch.device) -> dict:
    from mammo_fl.common.models import build_model

    size = (args.height, args.width)
    t0 = time.perf_counter()
    table, cache = make_cached_dataset(args.workdir, args.images, size)
    print(f"(a) {len(table)} cached images at {size[0]}x{size[1]} ready in {time.perf_counter() - t0:.1f} s; "
          f"batch {args.batch}, device {device}, torch threads {torch.get_num_threads()}, "
          f"{args.epochs} interleaved epochs per variant (median)")
    seed_everything(0)
    model = build_model("whole_image", CPU_SPEC).to(device)
    set_trainable(model, "all")
    probe = WholeImageDataset(table, cache, mean=50.0, augment=False)
    x = torch.stack([probe[i][0] for i in range(args.batch)]).to(device)
    y = torch.tensor([i % 2 for i in range(args.batch)], device=device)
    decoded = WholeImageDataset(table, cache, mean=50.0, augment=True, seed=0)
    preloaded = WholeImageDataset(table, cache, mean=50.0, augment=True, seed=0)
    preloaded.preload()
    variants = {
        "step alone (pre-loaded tensors)": StepOnly(model, x, y, device, len(table) // args.batch),
        "full: PNG decode + batch aug on device": FullLoop(model, decoded, device, args.batch, args.workers, True),
        "full: PNG decode + per-image aug in Dataset": FullLoop(model, decoded, device, args.batch, args.workers,
                                                                False),
        "full: RAM-preloaded + batch aug on device": FullLoop(model, preloaded, device, args.batch, args.workers,
                                                              True),
    }
    # Interleave the variants epoch by epoch: CPU load from other processes drifts over minutes.
    # Wall-clock images/s is what a user sees; images per CPU-second of this process is the work itself
    # (insensitive to other jobs on a shared machine; equal to wall time on an idle one with 1 thread).
    wall: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.epochs):
        for name, variant in variants.items():
            n, sec, cpu_sec = variant.run()
            wall[name].append(n / sec)
            cpu[name].append(n / max(cpu_sec, 1e-9))
    med = {name: (float(torch.tensor(wall[name]).median()), float(torch.tensor(cpu[name]).median()))
           for name in variants}
    step_w, step_c = med["step alone (pre-loaded tensors)"]
    print(f"    {'variant':46s} {'images/s':>9s} {'ratio':>6s} {'img/CPU-s':>10s} {'ratio':>6s}")
    for name, (w, c) in med.items():
        print(f"    {name:46s} {w:9.1f} {w / step_w:6.2f} {c:10.1f} {c / step_c:6.2f}")
    return {name: {"images_per_s": round(w, 2), "ratio": round(w / step_w, 3), "images_per_cpu_s": round(c, 2),
                   "cpu_ratio": round(c / step_c, 3)} for name, (w, c) in med.items()}


def _paper_step_worker(device_name: str, height: int, width: int, steps: int, queue) -> None:
    """Fresh process: RSS growth is the steps', not the rest of the benchmark's."""
    from mammo_fl.common.models import build_model

    device = torch.device(device_name)
    base = rss_peak_mb()
    model = build_model("whole_image", PAPER_SPEC).to(device)
    set_trainable(model, "all")
    after_model = rss_peak_mb()
    x = torch.randn(2, 3, height, width, device=device) * 30
    y = torch.tensor([0, 1], device=device)
    opt = torch.optim.Adam(trainable_parameters(model), lr=1e-5)
    scaler = make_grad_scaler(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    first = _timed_steps(model, opt, scaler, device, x, y, 1)
    out = {"seconds": first["seconds"], "rss_model_mb": after_model - base,
           "rss_step_mb": rss_peak_mb() - after_model, "loss": first["loss"],
           "params_m": sum(p.numel() for p in model.parameters()) / 1e6}
    if steps > 1:
        timed = _timed_steps(model, opt, scaler, device, x, y, steps - 1)
        out["timed_steps"] = steps - 1
        out["images_per_s"] = 2 * (steps - 1) / timed["seconds"]
    out["rss_peak_mb"] = rss_peak_mb()
    if device.type == "cuda":
        out["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
        out["cuda_max_reserved_mb"] = torch.cuda.max_memory_reserved() / 2**20
    queue.put(out)


def _timed_steps(model, opt, scaler, device: torch.device, x: torch.Tensor, y: torch.Tensor, steps: int) -> dict:
    start = time.perf_counter()
    stats = run_epoch(model, [(x, y)] * steps, opt, device, scaler=scaler)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return {"seconds": time.perf_counter() - start, "loss": stats.loss}


def bench_paper_step(args: argparse.Namespace, device: torch.device) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_paper_step_worker, args=(str(device), args.paper_height, args.paper_width,
                                                       args.paper_steps, queue))
    proc.start()
    proc.join()
    if proc.exitcode != 0:
        print(f"(b) paper step failed (exit status {proc.exitcode})")
        return {"failed": proc.exitcode}
    r = queue.get()
    print(f"(b) one paper-preset training step (ResNet50 + [512-512-1024]x2, {r['params_m']:.1f} M params, "
          f"batch 2 at {args.paper_height}x{args.paper_width}, all layers, {device}): {r['seconds']:.1f} s")
    print(f"    RSS: model {r['rss_model_mb']:.0f} MB, step +{r['rss_step_mb']:.0f} MB, process peak "
          f"{r['rss_peak_mb']:.0f} MB" + (f"; CUDA max allocated {r['cuda_max_allocated_mb']:.0f} MB"
                                          if "cuda_max_allocated_mb" in r else ""))
    if "images_per_s" in r:
        print(f"    throughput over {r['timed_steps']} more steps (after the first): {r['images_per_s']:.2f} images/s")
    return {k: round(v, 2) if isinstance(v, float) else v for k, v in r.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=48)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--height", type=int, default=288)
    p.add_argument("--width", type=int, default=224)
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (default 1: on 2 cores shared with other jobs, 2 OpenMP threads "
                        "measured 7x slower); 0 = torch's default")
    p.add_argument("--device", default="auto")
    p.add_argument("--skip-paper", action="store_true", help="skip (b), the paper-size step")
    p.add_argument("--skip-throughput", action="store_true", help="skip (a), the CPU-preset throughput")
    p.add_argument("--paper-height", type=int, default=1152)
    p.add_argument("--paper-width", type=int, default=896)
    p.add_argument("--paper-steps", type=int, default=1,
                   help="paper-size steps in (b); > 1 also times steps 2..N as images/s (use ~20 on a GPU)")
    p.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "mammo_bench_train",
                   help="synthetic images + cache, reused between runs")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = select_device(args.device)
    results = {"device": str(device), "threads": torch.get_num_threads(), "torch": torch.__version__}
    if not args.skip_throughput:
        results["throughput"] = bench_throughput(args, device)
        loop, step = results["throughput"][HEADLINE], results["throughput"]["step alone (pre-loaded tensors)"]
        results.update(loop_images_per_s=loop["images_per_s"], step_images_per_s=step["images_per_s"],
                       ratio=round(loop["images_per_s"] / step["images_per_s"], 3),
                       load_average_1min=round(os.getloadavg()[0], 1))
        print(f"full training loop / model step alone: {results['ratio']:.2f} "
              f"({HEADLINE}; load average {results['load_average_1min']})")
    if not args.skip_paper:
        results["paper_step"] = bench_paper_step(args, device)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
