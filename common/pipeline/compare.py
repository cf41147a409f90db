"""Paired comparison of two models' predictions on the same images (`mammo-train compare`).

Two designs scored on one test set are correlated: both find the easy cancers and miss the same
hard ones. Comparing their separate bootstrap CIs hides that; resampling the images (or, with an
index, the patients) once for both models gives the CI of the difference itself.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mammo_fl.common.utils.errors import DataError
from mammo_fl.common.imaging.index import load_index
from mammo_fl.common.evaluation.metrics import PairedAucDifference, paired_auc_difference

COLUMNS = ("image_id", "malignant_prob", "label")


def read_predictions(path: str | Path) -> pd.DataFrame:
    """A predictions CSV (`mammo-train evaluate/predict/baseline`) with labels, one row per image."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "predictions file not found")
    try:
        table = pd.read_csv(path, dtype={"image_id": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(path, f"not a predictions CSV ({exc})") from None
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise DataError(path, f"missing column(s) {', '.join(missing)} (needs {', '.join(COLUMNS)})")
    if table["label"].isna().any() or table["malignant_prob"].isna().any():
        raise DataError(path, "some rows have no label or no score (a comparison needs every image labelled)")
    if table["image_id"].duplicated().any():
        raise DataError(path, f"image {table['image_id'][table['image_id'].duplicated()].iloc[0]!r} is listed twice")
    return table[list(COLUMNS)]


def align_predictions(a: pd.DataFrame, b: pd.DataFrame, path_a: Path, path_b: Path) -> pd.DataFrame:
    """Rows for the same images in both files, with agreeing labels (anything else is an error)."""
    ids_a, ids_b = set(a["image_id"]), set(b["image_id"])
    if ids_a != ids_b:
        only_a, only_b = sorted(ids_a - ids_b), sorted(ids_b - ids_a)
        detail = f"{len(only_a)} image(s) only in the first" + (f" (e.g. {only_a[0]})" if only_a else "")
        detail += f", {len(only_b)} only in the second" + (f" (e.g. {only_b[0]})" if only_b else "")
        raise DataError(path_b, f"scores other images than {path_a}: {detail}")
    merged = a.merge(b, on="image_id", suffixes=("_a", "_b"))
    clash = merged["label_a"] != merged["label_b"]
    if clash.any():
        raise DataError(path_b, f"label of image {merged['image_id'][clash].iloc[0]!r} differs from {path_a}")
    return merged.rename(columns={"label_a": "label"}).drop(columns="label_b")


def compare_predictions(path_a: str | Path, path_b: str | Path, index_dir: str | Path | None = None,
                        n: int = 2000, seed: int = 0) -> PairedAucDifference:
    """AUC(a) - AUC(b) with a paired bootstrap CI; patients resampled whole when `index_dir` is given."""
    path_a, path_b = Path(path_a), Path(path_b)
    merged = align_predictions(read_predictions(path_a), read_predictions(path_b), path_a, path_b)
    groups = None
    if index_dir is not None:
        patients = load_index(index_dir).images.set_index("image_id")["patient_id"].astype(str)
        unknown = ~merged["image_id"].isin(patients.index)
        if unknown.any():
            raise DataError(index_dir, f"image {merged['image_id'][unknown].iloc[0]!r} is not in this index")
        groups = patients.loc[merged["image_id"]].to_numpy()
    return paired_auc_difference(merged["label"].to_numpy(np.int64), merged["malignant_prob_a"].to_numpy(),
                                 merged["malignant_prob_b"].to_numpy(), n=n, seed=seed, groups=groups)
