"""Patient-level stratified splits with fixed seeds.

- ``ddsm`` (Shen et al.): 15 % of patients to test, then 10 % of the remaining
  (training) patients to validation.
- ``inbreast``: 70 % train / 30 % val.
- custom: a mapping ``{"train": .., "val": .., "test": ..}`` (fractions summing to 1).

Stratification is on the patient label (1 when any image is positive): each split takes
its share of positive and of negative patients. No patient is ever on two sides.

The stratification primitives (`patients_by_class`, `shuffled_strata`) are shared with the
hospital's local train/val split (`stratified_holdout`, used by client/site.py) and the
simulation's nested training subsets and label-skew partitions (simulations/partition.py).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np
import pandas as pd

from mammo_fl.common.utils.errors import ConfigError, DataError
from mammo_fl.common.imaging.index import SPLIT_NAMES

SCHEMES = ("ddsm", "inbreast")


def patient_labels(images: pd.DataFrame) -> pd.Series:
    """patient_id -> 1 if any of the patient's images is positive."""
    if not {"patient_id", "label"} <= set(images.columns):
        raise DataError(None, "images table needs patient_id and label columns to split")
    if images.empty:
        raise DataError(None, "no images to split")
    return images.groupby(images["patient_id"].astype(str))["label"].max().astype(int).sort_index()


def patients_by_class(labels: pd.Series) -> dict[int, list[str]]:
    """Patient ids (`labels.index`) of each class, classes ascending, ids in the order of `labels`."""
    return {k: [str(p) for p in labels.index[labels == k]] for k in sorted(labels.unique())}


def shuffled_strata(labels: pd.Series, rng: np.random.Generator) -> Iterator[tuple[int, list[str]]]:
    """(class, its patients in a random order) for each class, ascending.

    Lazy: the shuffle of a class is drawn from `rng` when that class is reached, so a caller
    may draw from the same `rng` in between (and gets the same numbers as with inline shuffles).
    """
    for label, ids in patients_by_class(labels).items():
        yield label, [ids[i] for i in rng.permutation(len(ids))]


def stratified_holdout(labels: pd.Series, fraction: float, seed: int) -> dict[str, str]:
    """Patient -> "train" | "val": `fraction` of each class (rounded) to validation, and both sides get
    every class that has at least two patients."""
    out: dict[str, str] = {}
    for _, ids in shuffled_strata(labels.sort_index(), np.random.default_rng(seed)):
        n_val = int(round(len(ids) * fraction))
        if len(ids) >= 2:
            n_val = min(max(n_val, 1), len(ids) - 1)
        for i, pid in enumerate(ids):
            out[pid] = "val" if i < n_val else "train"
    return out


def _take(strata: dict[int, list[str]], count: int, rng: np.random.Generator) -> list[str]:
    """Pick `count` patients spread over the strata in proportion (largest remainder)."""
    total = sum(len(v) for v in strata.values())
    if count <= 0 or total == 0:
        return []
    keys = sorted(strata)
    exact = {k: count * len(strata[k]) / total for k in keys}
    share = {k: int(np.floor(exact[k])) for k in keys}
    order = sorted(keys, key=lambda k: (exact[k] - share[k], len(strata[k])), reverse=True)
    for k in order[: count - sum(share.values())]:
        share[k] += 1
    picked: list[str] = []
    for k in keys:
        chosen = rng.choice(len(strata[k]), size=min(share[k], len(strata[k])), replace=False)
        chosen_set = {strata[k][i] for i in chosen}
        picked.extend(p for p in strata[k] if p in chosen_set)
        strata[k] = [p for p in strata[k] if p not in chosen_set]
    return picked


def _count(n: int, fraction: float, keep_rest: int) -> int:
    """Patients for a split: rounded share, at least 1 when the fraction is > 0 and
    enough patients remain for the other splits."""
    if fraction <= 0:
        return 0
    return int(min(max(1, round(n * fraction)), max(0, n - keep_rest)))


def _fractions(scheme: str | Mapping[str, float]) -> list[tuple[str, float]]:
    """Sequential draws: (split, fraction of the patients still unassigned)."""
    if scheme == "ddsm":
        return [("test", 0.15), ("val", 0.10)]
    if scheme == "inbreast":
        return [("val", 0.30)]
    if isinstance(scheme, str):
        raise ConfigError(f"unknown split scheme {scheme!r}; use ddsm, inbreast or train/val/test fractions")
    fr = {k: float(v) for k, v in scheme.items()}
    unknown = set(fr) - set(SPLIT_NAMES)
    if unknown or any(v < 0 for v in fr.values()) or abs(sum(fr.values()) - 1.0) > 1e-6 or fr.get("train", 0) <= 0:
        raise ConfigError(f"split fractions {dict(scheme)} must be train/val/test >= 0, train > 0, summing to 1")
    steps, left = [], 1.0
    for name in ("test", "val"):
        if fr.get(name, 0) > 0:
            steps.append((name, fr[name] / left))
            left -= fr[name]
    return steps


def parse_fractions(text: str) -> dict[str, float]:
    """`train=0.7,val=0.15,test=0.15` -> dict (for the CLI)."""
    out: dict[str, float] = {}
    for part in text.split(","):
        if "=" not in part:
            raise ConfigError(f"split fractions {text!r} must look like train=0.7,val=0.3")
        key, value = part.split("=", 1)
        try:
            out[key.strip()] = float(value)
        except ValueError:
            raise ConfigError(f"split fraction {part!r} is not a number") from None
    return out


def split_patients(
    images_df: pd.DataFrame, scheme: str | Mapping[str, float] = "ddsm", seed: int = 0
) -> pd.DataFrame:
    """DataFrame[patient_id, split] (train|val|test), stratified on the patient label."""
    labels = patient_labels(images_df)
    rng = np.random.default_rng(seed)
    strata = patients_by_class(labels)
    steps = _fractions(scheme)
    assigned: dict[str, str] = {}
    for i, (name, fraction) in enumerate(steps):
        remaining = sum(len(v) for v in strata.values())
        keep = len(steps) - i  # leave at least one patient for each later split and train
        for p in _take(strata, _count(remaining, fraction, keep), rng):
            assigned[p] = name
    for group in strata.values():
        for p in group:
            assigned[p] = "train"
    out = pd.DataFrame({"patient_id": list(labels.index), "split": [assigned[p] for p in labels.index]})
    return out.reset_index(drop=True)


def split_summary(images_df: pd.DataFrame, split: pd.DataFrame) -> pd.DataFrame:
    """Per split: patients, images, positive images (for the CLI report)."""
    merged = images_df.assign(patient_id=images_df["patient_id"].astype(str)).merge(split, on="patient_id", how="left")
    rows = []
    for name in SPLIT_NAMES:
        part = merged[merged["split"] == name]
        rows.append({"split": name, "patients": part["patient_id"].nunique(), "images": len(part),
                     "positive_images": int(part["label"].astype(int).sum())})
    return pd.DataFrame(rows)
