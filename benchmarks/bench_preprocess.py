"""DICOM -> cached 16-bit PNG throughput at full-field size, 1 worker vs all cores.

Writes N crafted full-field mammograms (default 4084x3328 uint16, MONOCHROME2, MG) to a
temporary folder, then measures side by side:
  1. resize back-ends on one image (torch antialiased bicubic, Pillow float, Pillow I;16);
  2. the stages of one image (read + LUTs, geometry + resize, PNG write);
  3. ImageCache.build with 1 worker and with all cores: images/s and peak memory
     (RSS summed over this process and its workers, sampled from /proc).

    python benchmarks/bench_preprocess.py                 # default: 6 images, < 2 min
    python benchmarks/bench_preprocess.py --images 32 --mode crop --workers 8
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from mammo_fl.common.imaging.dicom import read_dicom
from mammo_fl.common.imaging.cache import IMAGE_PNG_LEVEL, ImageCache
from mammo_fl.common.imaging.pool import available_cores
from mammo_fl.common.imaging.png16 import write_png
from mammo_fl.common.imaging.geometry import (
    PreprocessSettings,
    parse_size,
    preprocess_array,
    resize_image,
    to_uint16,
)


def write_full_field(path: Path, height: int, width: int, seed: int) -> None:
    """A breast-like uint16 image: bright half-ellipse on one side, textured, dark background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    inside = ((yy - height / 2) / (0.45 * height)) ** 2 + (xx / (0.75 * width)) ** 2 <= 1.0
    texture = rng.normal(0, 1500, size=(-(-height // 8), -(-width // 8))).astype(np.float32)
    texture = np.kron(texture, np.ones((8, 8), np.float32))[:height, :width]
    img = np.where(inside, 32000 + texture, 200 + rng.integers(0, 200, (height, width)))
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.2"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.Rows, ds.Columns = "MG", height, width
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = np.clip(img, 0, 65535).astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)


def _tree_rss_mb(root_pid: int) -> float:
    """RSS (MiB) of a process and all its descendants (Linux /proc)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    parents[int(entry)] = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    tree, frontier = {root_pid}, [root_pid]
    while frontier:
        pid = frontier.pop()
        kids = [c for c, p in parents.items() if p == pid and c not in tree]
        tree.update(kids)
        frontier.extend(kids)
    total = 0
    for pid in tree:
        try:
            with open(f"/proc/{pid}/status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


class PeakMemory:
    """Samples the process tree's RSS in a thread while the block runs."""

    def __init__(self, interval: float = 0.1) -> None:
        self.interval, self.peak_mb, self._stop = interval, 0.0, threading.Event()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, _tree_rss_mb(os.getpid()))
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, _tree_rss_mb(os.getpid()))


def bench_resize(pixels: np.ndarray, height: int, width: int, repeats: int = 3) -> dict[str, float]:
    """Seconds per image for each resize back-end (one thread), plus agreement with torch."""
    import torch
    from PIL import Image

    torch.set_num_threads(1)
    out: dict[str, float] = {}

    def best(fn) -> tuple[float, np.ndarray]:  # noqa: ANN001
        times, result = [], None
        for _ in range(repeats):
            t = time.perf_counter()
            result = fn()
            times.append(time.perf_counter() - t)
        return min(times), result  # type: ignore[return-value]

    out["torch bicubic antialias"], ref = best(lambda: resize_image(pixels, height, width))
    out["Pillow F bicubic"], pil = best(lambda: np.asarray(Image.fromarray(pixels).resize((width, height), Image.BICUBIC)))
    u16 = to_uint16(pixels)
    out["Pillow I;16 bicubic"], _ = best(lambda: np.asarray(Image.fromarray(u16).resize((width, height), Image.BICUBIC)))
    out["max |torch - Pillow F| (0..1)"] = float(np.abs(np.clip(pil, 0, 1) - ref).max())
    return out


def bench_stages(path: Path, settings: PreprocessSettings, tmp: Path) -> dict[str, float]:
    t0 = time.perf_counter()
    img = read_dicom(path)
    t1 = time.perf_counter()
    array, _ = preprocess_array(img.pixels, settings)
    t2 = time.perf_counter()
    write_png(tmp / "stage.png", array, IMAGE_PNG_LEVEL)
    t3 = time.perf_counter()
    return {"read + LUTs": t1 - t0, "geometry + resize": t2 - t1, "PNG write": t3 - t2}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=6)
    ap.add_argument("--src-size", default="4084x3328", help="source HEIGHTxWIDTH")
    ap.add_argument("--size", default="1152x896", help="target HEIGHTxWIDTH")
    ap.add_argument("--mode", choices=["paper", "crop"], default="paper")
    ap.add_argument("--workers", type=int, default=None, help="parallel run (default: all cores)")
    ap.add_argument("--keep", help="keep the generated DICOMs in this folder")
    args = ap.parse_args()

    sh, sw = parse_size(args.src_size)
    th, tw = parse_size(args.size)
    settings = PreprocessSettings(th, tw, args.mode)
    cores = args.workers or available_cores()
    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_preprocess_"))
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        print(f"writing {args.images} crafted DICOMs {sh}x{sw} uint16 ...", flush=True)
        paths = []
        for i in range(args.images):
            p = tmp / f"img{i:03d}.dcm"
            if not p.exists():
                write_full_field(p, sh, sw, seed=i)
            paths.append(p)
        mb = paths[0].stat().st_size / 2**20
        print(f"  {mb:.1f} MiB each\n")

        pixels = read_dicom(paths[0]).pixels
        print(f"resize {sh}x{sw} -> {th}x{tw}, one thread (best of 3):")
        for name, value in bench_resize(pixels, th, tw).items():
            print(f"  {name:32s} " + (f"{value:8.4f} s/image" if "max" not in name else f"{value:8.1e}"))
        print(f"\nstages of one image ({args.mode} mode):")
        for name, value in bench_stages(paths[0], settings, tmp).items():
            print(f"  {name:32s} {value:8.3f} s")

        print(f"\nImageCache.build, {args.images} images, {args.mode} mode -> {th}x{tw} 16-bit PNG:")
        print(f"  {'workers':>7s} {'seconds':>8s} {'images/s':>9s} {'peak RSS (MiB, all procs)':>26s}")
        rates = {}
        runs = [(1, "")] + ([(cores, "cold: incl. pool start-up"), (cores, "warm: pool server already up")]
                           if cores > 1 else [])
        for i, (workers, note) in enumerate(runs):
            cache_root = tmp / f"cache_{i}"
            shutil.rmtree(cache_root, ignore_errors=True)
            cache = ImageCache(cache_root, settings)
            with PeakMemory() as mem:
                report = cache.build(paths, workers=workers, progress=False)
            assert report.done == args.images and not report.skipped, report.skipped
            rates[(workers, note)] = report.per_second
            print(f"  {workers:7d} {report.seconds:8.2f} {report.per_second:9.2f} {mem.peak_mb:26.0f}  {note}")
        if cores > 1:
            warm = rates[(cores, runs[-1][1])] / rates[(1, "")]
            print(f"  speed-up with {cores} workers (warm): {warm:.2f}x on {available_cores()} visible cores "
                  f"(load average now {os.getloadavg()[0]:.1f})")
        png = next((tmp / "cache_0").rglob("*.png"))
        print(f"\ncached PNG: {png.stat().st_size / 2**20:.2f} MiB, dtype uint16, "
              f"source/cache size ratio {mb / (png.stat().st_size / 2**20):.1f}x")
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
