"""Patient-level stratified splits."""

from __future__ import annotations

import pandas as pd
import pytest

from mammo_fl.common.utils.errors import ConfigError, DataError
from mammo_fl.common.imaging.index import load_split, write_split
from mammo_fl.common.imaging.splits import parse_fractions, split_patients


def images(n_patients=200, pos_every=5, views=4):
    rows = []
    for p in range(n_patients):
        for v in range(views):
            label = int(p % pos_every == 0 and v == 1)  # one positive image per positive patient
            rows.append({"image_id": f"{p}_{v}", "patient_id": f"P{p:04d}", "label": label})
    return pd.DataFrame(rows)


def test_ddsm_scheme_proportions_and_disjoint():
    df = images()
    split = split_patients(df, "ddsm", seed=1)
    assert split["patient_id"].is_unique and set(split["patient_id"]) == set(df["patient_id"])
    counts = split["split"].value_counts()
    assert counts["test"] == 30  # 15 % of 200
    assert counts["val"] == 17  # 10 % of the 170 training patients
    assert counts["train"] == 153
    merged = df.merge(split, on="patient_id")
    # every patient's images are on one side only
    assert (merged.groupby("patient_id")["split"].nunique() == 1).all()
    # stratified: positive patient share about 20 % everywhere
    per = merged.groupby(["split", "patient_id"])["label"].max().groupby("split").mean()
    assert all(abs(v - 0.2) < 0.05 for v in per)


def test_inbreast_scheme():
    split = split_patients(images(100), "inbreast", seed=0)
    assert split["split"].value_counts().to_dict() == {"train": 70, "val": 30}


def test_seed_reproducible_and_different():
    df = images()
    a, b, c = (split_patients(df, "ddsm", seed=s) for s in (3, 3, 4))
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(c)


def test_custom_fractions_and_tiny_sets():
    split = split_patients(images(20), {"train": 0.5, "val": 0.25, "test": 0.25}, seed=0)
    assert split["split"].value_counts().to_dict() == {"train": 10, "val": 5, "test": 5}
    tiny = split_patients(images(3), "ddsm", seed=0)  # every split still gets a patient
    assert sorted(tiny["split"]) == ["test", "train", "val"]
    assert parse_fractions("train=0.7,val=0.3") == {"train": 0.7, "val": 0.3}


def test_bad_scheme_and_input():
    with pytest.raises(ConfigError):
        split_patients(images(10), "random", seed=0)
    with pytest.raises(ConfigError):
        split_patients(images(10), {"train": 0.5, "val": 0.2}, seed=0)
    with pytest.raises(DataError):
        split_patients(pd.DataFrame({"patient_id": [], "label": []}), "ddsm")


def test_split_file_round_trip(tmp_path):
    split = split_patients(images(40), "ddsm", seed=7)
    write_split(tmp_path, split)
    pd.testing.assert_frame_equal(load_split(tmp_path), split)
