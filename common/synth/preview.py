"""A PNG contact sheet of a generated dataset with ROI outlines (what the generator makes)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from common.dicom import read_dicom
from common.errors import DataError

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


def render_preview(dataset_dir: str | Path, out_png: str | Path, n: int = 12, columns: int = 6, seed: int = 0) -> Path:
    """Write a grid of `n` images from a synthetic dataset folder, ROI outlines drawn on top."""
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
    rows = int(np.ceil(len(chosen) / columns))
    cols = min(columns, len(chosen))
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 3.5 * rows), squeeze=False, facecolor="black")
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (_, row) in zip(axes.ravel(), chosen.iterrows()):
        pixels = read_dicom(root / row["image_path"], min_side=1).pixels
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
