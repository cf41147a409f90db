"""One stratification primitive (common.imaging.splits) behind the three patient splits.

The reference functions are verbatim copies of the implementations the primitive replaced
(client/site.py `split_patients_locally`, simulations/partition.py `_stratified_order` and the
label-skew partition): the same seed must still give the same split.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mammo_fl.client.site import split_patients_locally
from mammo_fl.simulations import partition as P


def _old_split_patients_locally(images: pd.DataFrame, val_fraction: float, seed: int) -> dict[str, str]:
    per_patient = images.groupby(images["patient_id"].astype(str))["label"].max()
    rng = np.random.default_rng(seed)
    out: dict[str, str] = {}
    for label in sorted(per_patient.unique()):
        ids = sorted(per_patient.index[per_patient == label])
        rng.shuffle(ids)
        n_val = int(round(len(ids) * val_fraction))
        if len(ids) >= 2:
            n_val = min(max(n_val, 1), len(ids) - 1)
        for i, pid in enumerate(ids):
            out[pid] = "val" if i < n_val else "train"
    return out


def _old_stratified_order(patients: pd.DataFrame, rng: np.random.Generator) -> list[str]:
    keyed: list[tuple[float, float, str]] = []
    for _, group in patients.groupby("label", sort=True):
        ids = group["patient_id"].astype(str).to_numpy()
        ids = ids[rng.permutation(len(ids))]
        for i, pid in enumerate(ids):
            keyed.append(((i + 0.5) / len(ids), rng.random(), pid))
    keyed.sort()
    return [pid for _, _, pid in keyed]


def _old_label_skew(patients: pd.DataFrame, k: int, rng: np.random.Generator, alpha: float) -> dict[str, int]:
    out: dict[str, int] = {}
    for _, group in patients.groupby("label", sort=True):
        ids = group["patient_id"].astype(str).to_numpy()
        ids = ids[rng.permutation(len(ids))]
        props = rng.dirichlet([alpha] * k)
        cuts = np.round(np.cumsum(props)[:-1] * len(ids)).astype(int)
        for site, chunk in enumerate(np.split(ids, cuts)):
            for pid in chunk:
                out[str(pid)] = site
    for site in range(k):
        if site not in out.values():
            sizes = pd.Series(out).value_counts()
            donor_site = int(sizes.idxmax())
            donor = sorted(p for p, s in out.items() if s == donor_site)[0]
            out[donor] = site
    return out


def _images(n_patients: int, seed: int) -> pd.DataFrame:
    """Images of patients with 1-4 images each, ~30 % positive patients, unsorted ids."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in rng.permutation(n_patients):
        positive = rng.random() < 0.3
        for j in range(int(rng.integers(1, 5))):
            rows.append({"patient_id": f"P{p:04d}", "image_id": f"P{p:04d}_{j}",
                         "label": int(positive and (j == 0 or rng.random() < 0.5))})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("n_patients", [1, 2, 5, 23, 120])
@pytest.mark.parametrize("seed", [0, 1, 7])
@pytest.mark.parametrize("fraction", [0.1, 0.3, 0.5])
def test_site_split_is_unchanged(n_patients: int, seed: int, fraction: float) -> None:
    images = _images(n_patients, seed)
    assert split_patients_locally(images, fraction, seed) == _old_split_patients_locally(images, fraction, seed)


@pytest.mark.parametrize("n_patients", [3, 23, 120])
@pytest.mark.parametrize("seed", [0, 1, 7])
def test_training_subsets_and_label_skew_partitions_are_unchanged(n_patients: int, seed: int) -> None:
    patients = P.patient_table(_images(n_patients, seed))
    shuffled = patients.sample(frac=1.0, random_state=seed).reset_index(drop=True)  # order matters: keep it
    for table in (patients, shuffled):
        assert P._stratified_order(table, np.random.default_rng([seed, 1])) == \
            _old_stratified_order(table, np.random.default_rng([seed, 1]))
        for n in (1, n_patients // 2 or 1, n_patients):
            expected = sorted(_old_stratified_order(table, np.random.default_rng([seed, 1]))[:n])
            assert P.training_subset(table, n, seed) == expected
        k = min(3, n_patients)
        assert P._partition_label_skew(table, k, np.random.default_rng([seed, 2, k]), 0.5) == \
            _old_label_skew(table, k, np.random.default_rng([seed, 2, k]), 0.5)
