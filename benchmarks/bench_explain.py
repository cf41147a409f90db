"""`mammo-train explain` on a trained run: time per method, localisation scores, a grid of overlays.

Runs both heatmap methods (patch classifier slid over the image; the whole-image model's CAM) on
the first N test images (malignant first) and prints, per method, wall and CPU time (this process
only: on shared cores the wall figure depends on the load), the pointing game and the mean heatmap
mass inside ROIs. With --grid it also writes a picture: rows = methods, columns = a malignant, a
benign and (from --normal-data, an index of images without lesions, e.g. a hospital manifest) a
normal image.

    python benchmarks/bench_explain.py --model RUN/whole_image.pt --data IDX --images 100 --out /tmp/bench
    python benchmarks/bench_explain.py ... --normal-data SITEIDX --grid docs/explain_grid.png
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import pandas as pd
import torch
from PIL import Image, ImageDraw

from mammo_fl.common.pipeline.explain_run import ExplainResult, ExplainSettings, run_explain
from mammo_fl.common.pipeline.overlay import text_font

METHODS = ("patch", "cam")
THUMB_HEIGHT = 380


def timed_explain(settings: ExplainSettings) -> tuple[ExplainResult, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    result = run_explain(settings)
    return result, time.perf_counter() - wall, time.process_time() - cpu


def report(method: str, result: ExplainResult, wall: float, cpu: float) -> None:
    n = len(result.table)
    line = f"{method:5s}: {n} images in {wall / 60:.1f} min wall, {cpu:.0f} CPU-s ({cpu / n:.2f} CPU-s/image)"
    if result.pointing is not None and result.pointing.images:
        p = result.pointing
        line += (f"; pointing game {p.accuracy:.3f} ({p.hits}/{p.images}; chance {p.chance:.3f}), "
                 f"mean ROI mass {p.mean_roi_mass:.3f}")
    print(line, flush=True)


def pick(table: pd.DataFrame, kind: str) -> pd.Series | None:
    """First malignant image, first benign image with an ROI, or first normal (label 0) image."""
    if kind == "malignant":
        rows = table[table["label"] == 1]
    elif kind == "benign":
        rows = table[(table["label"] == 0) & table.get("peak_in_roi", pd.Series(index=table.index)).notna()]
    else:
        rows = table[table["label"] == 0]
    return rows.iloc[0] if len(rows) else None


def thumbnail(path: Path) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB").resize((round(im.width * THUMB_HEIGHT / im.height), THUMB_HEIGHT),
                                        Image.Resampling.LANCZOS)


def write_grid(cells: dict[tuple[str, str], Path], columns: list[str], out: Path) -> None:
    """Rows = methods, columns = image kinds; captions above, a small palette PNG."""
    thumbs = {k: thumbnail(v) for k, v in cells.items()}
    width = max(t.width for t in thumbs.values())
    head, side = 28, 110
    grid = Image.new("RGB", (side + width * len(columns), head + THUMB_HEIGHT * len(METHODS)), (0, 0, 0))
    draw = ImageDraw.Draw(grid)
    for j, column in enumerate(columns):
        draw.text((side + j * width + 8, 6), column, fill=(255, 255, 255), font=text_font(18))
    for i, method in enumerate(METHODS):
        draw.text((8, head + i * THUMB_HEIGHT + THUMB_HEIGHT // 2 - 10), method, fill=(255, 255, 255),
                  font=text_font(18))
        for j, column in enumerate(columns):
            if (method, column) in thumbs:
                grid.paste(thumbs[(method, column)], (side + j * width, head + i * THUMB_HEIGHT))
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(out, format="PNG", optimize=True)
    print(f"grid -> {out} ({out.stat().st_size / 1024:.0f} KiB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="whole_image.pt (patch_model.pt beside it)")
    parser.add_argument("--data", type=Path, required=True, help="index directory with ROIs and a split")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--normal-data", type=Path, help="index of images for the grid's normal column")
    parser.add_argument("--grid", type=Path, help="write the overlay grid here")
    args = parser.parse_args()
    torch.set_num_threads(1)  # shared cores: one thread per process (docs/models.md)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
    cells: dict[tuple[str, str], Path] = {}
    for method in METHODS:
        out = args.out / method
        settings = ExplainSettings(model=args.model, data=args.data, out=out, images=args.images, method=method,
                                   workers=1, progress=False)
        result, wall, cpu = timed_explain(settings)
        report(method, result, wall, cpu)
        for kind in ("malignant", "benign"):
            row = pick(result.table, kind)
            if row is not None:
                cells[(method, kind)] = out / row["overlay"]
        if args.normal_data:
            normal_out = args.out / f"{method}_normal"
            normal = run_explain(ExplainSettings(model=args.model, data=args.normal_data, out=normal_out,
                                                 method=method, workers=1, progress=False))
            row = pick(normal.table, "normal")
            if row is not None:
                cells[(method, "normal")] = normal_out / row["overlay"]
    print(f"load average {os.getloadavg()[0]:.1f}", flush=True)
    if args.grid:
        write_grid(cells, ["malignant", "benign", "normal"] if args.normal_data else ["malignant", "benign"],
                   args.grid)


if __name__ == "__main__":
    main()
