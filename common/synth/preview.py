"""A PNG contact sheet of a generated dataset with ROI outlines (what the generator makes)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from mammo_fl.common.imaging.dicom import read_dicom
from mammo_fl.common.utils.errors import DataError

COLOURS = {"MALIGNANT": "#ff3030", "BENIGN": "#30ff60", "BENIGN_WITHOUT_CALLBACK": "#30c0ff"}


def _pick(images: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """Malignant, benign-lesion and normal images in turn, spreading vendors and views."""
    rng = np.random.default_rng(seed)
    groups = [
        images[images["label"] == 1],
        images[(images["label"] == 0) & (images["n_lesions"] > 0)],
        images[images["n_lesions"] == 0],
    ]
    groups = [g.sample(frac=1.0, random_state=int(rng.integers(2**31))) for g in groups if len(g)]
    order: list[int] = []
    seen_vendor: dict[str, int] = {}
    while len(order) < n and any(len(g) for g in groups):
        for gi, g in enumerate(groups):
            if len(order) >= n or not len(g):
                continue
            # Prefer the least-shown vendor within this group.
            counts = g["vendor"].map(lambda v: seen_vendor.get(v, 0))
            idx = counts.idxmin()
            order.append(idx)
            seen_vendor[g.at[idx, "vendor"]] = seen_vendor.get(g.at[idx, "vendor"], 0) + 1
            groups[gi] = g.drop(index=idx)
    return images.loc[order]


def _pick_rois(rois: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """Lesion close-ups, round robin over malignant / benign masses and calcifications."""
    if rois.empty:
        return rois
    rng = np.random.default_rng(seed + 1)
    pools = []
    for malignant in (True, False):
        for kind in ("mass", "calcification"):
            pool = rois[(rois["abnormality"] == kind) & ((rois["pathology"] == "MALIGNANT") == malignant)]
            pools.append(list(pool.sample(frac=1.0, random_state=int(rng.integers(2**31))).index))
    order: list[int] = []
    while len(order) < n and any(pools):
        for pool in pools:
            if pool and len(order) < n:
                order.append(pool.pop(0))
    return rois.loc[order]


def _closeup(ax, pixels: np.ndarray, roi: pd.Series) -> None:
    x0, y0, x1, y1 = (int(roi[c]) for c in ("x0", "y0", "x1", "y1"))
    half = int(max(x1 - x0, y1 - y0) * 0.9) + 4
    cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
    h, w = pixels.shape
    ys, xs = slice(max(cy - half, 0), min(cy + half, h)), slice(max(cx - half, 0), min(cx + half, w))
    ax.imshow(pixels[ys, xs], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest",
              extent=(xs.start - 0.5, xs.stop - 0.5, ys.stop - 0.5, ys.start - 0.5))
    poly = np.asarray(json.loads(roi["polygon"]))
    closed = np.vstack([poly, poly[:1]])
    ax.plot(closed[:, 0], closed[:, 1], color=COLOURS.get(roi["pathology"], "yellow"), lw=0.6, alpha=0.7)
    ax.set_xlim(xs.start, xs.stop)
    ax.set_ylim(ys.stop, ys.start)
    ax.set_title(f"{roi['pathology'].lower()} {roi['abnormality']}\n{roi['morphology'].replace('_', ' ')}",
                 color="#ff6060" if roi["pathology"] == "MALIGNANT" else "#60ff80", fontsize=7)


def render_preview(dataset_dir: str | Path, out_png: str | Path, n: int = 12, columns: int = 6, seed: int = 0,
                   closeups: int = 6) -> Path:
    """Write a grid of `n` images from a synthetic dataset folder, ROI outlines drawn on top,
    then a row of `closeups` lesion close-ups at full resolution."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    root = Path(dataset_dir)
    truth = root / "ground_truth.csv"
    if not truth.is_file():
        raise DataError(root, "no ground_truth.csv: not a synthetic dataset folder (run `mammo-data synth` first)")
    images = pd.read_csv(truth, dtype={"image_id": str, "site": str}, keep_default_na=False)
    rois_path = root / "ground_truth_rois.csv"
    rois = pd.read_csv(rois_path, dtype={"image_id": str}) if rois_path.is_file() else pd.DataFrame()
    if images.empty:
        raise DataError(truth, "no images listed")
    chosen = _pick(images, max(1, n), seed)
    close = _pick_rois(rois, closeups, seed) if closeups > 0 and len(rois) else pd.DataFrame()
    cols = min(columns, len(chosen))
    rows = int(np.ceil(len(chosen) / cols))
    close_rows = int(np.ceil(len(close) / cols)) if len(close) else 0
    fig, axes = plt.subplots(rows + close_rows, cols, figsize=(2.6 * cols, 3.5 * rows + 2.8 * close_rows),
                             squeeze=False, facecolor="black",
                             gridspec_kw={"height_ratios": [3.5] * rows + [2.8] * close_rows})
    for ax in axes.ravel():
        ax.axis("off")
    cache: dict[str, np.ndarray] = {}

    def pixels_of(image_path: str) -> np.ndarray:
        if image_path not in cache:
            cache[image_path] = read_dicom(root / image_path, min_side=1).pixels
        return cache[image_path]

    paths = dict(zip(images["image_id"], images["image_path"]))
    for ax, (_, roi) in zip(axes[rows:].ravel(), close.iterrows()):
        _closeup(ax, pixels_of(paths[roi["image_id"]]), roi)
    for ax, (_, row) in zip(axes.ravel(), chosen.iterrows()):
        pixels = pixels_of(row["image_path"])
        ax.imshow(pixels, cmap="gray", vmin=0.0, vmax=1.0, interpolation="lanczos")
        tags = []
        for _, roi in rois[rois["image_id"] == row["image_id"]].iterrows() if len(rois) else []:
            poly = np.asarray(json.loads(roi["polygon"]))
            closed = np.vstack([poly, poly[:1]])
            ax.plot(closed[:, 0], closed[:, 1], color=COLOURS.get(roi["pathology"], "yellow"), lw=0.8)
            tags.append(f"{roi['morphology'].replace('_', ' ')}")
        title = f"{row['vendor']} {row['laterality']}-{row['view']}\n" + (", ".join(tags) if tags else "normal")
        colour = "#ff6060" if int(row["label"]) == 1 else "white"
        ax.set_title(title, color=colour, fontsize=7)
    fig.suptitle(f"synthetic mammograms: {root.name}  (red = malignant ROI, green = benign ROI)",
                 color="white", fontsize=9)
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(out, dpi=110, facecolor="black")
    except OSError as exc:
        raise DataError(out, f"cannot write PNG: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)
    return out
