"""Patient-level subsets and site partitions: no patient in two sites, reproducible, nested subsets."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mammo_fl.common.utils.errors import ConfigError
from mammo_fl.simulations import partition as part


def _images(n_patients: int = 72, seed: int = 0) -> pd.DataFrame:
    """An INbreast-like image table: 2-6 images per patient, ~30% positive patients, 3 vendors."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        positive = rng.random() < 0.3
        vendor = ["hologic", "siemens", "ge"][int(rng.integers(3))]
        for j in range(int(rng.integers(2, 7))):
            rows.append({"image_id": f"P{p:03d}_{j}", "patient_id": f"P{p:03d}", "vendor": vendor,
                         "label": int(positive and j < 2), "image_path": f"/x/P{p:03d}_{j}.dcm"})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def patients() -> pd.DataFrame:
    return part.patient_table(_images())


def test_patient_table_one_row_per_patient(patients):
    images = _images()
    assert len(patients) == images["patient_id"].nunique()
    assert patients["n_images"].sum() == len(images)
    # a patient is positive when any image is
    assert set(patients[patients["label"] == 1]["patient_id"]) == set(images[images["label"] == 1]["patient_id"])


def test_subsets_are_nested_stratified_and_reproducible(patients):
    small = part.training_subset(patients, 20, seed=3)
    large = part.training_subset(patients, 40, seed=3)
    assert len(small) == 20 and len(large) == 40 and len(set(small)) == 20
    assert set(small) <= set(large)
    assert small == part.training_subset(patients, 20, seed=3)
    assert small != part.training_subset(patients, 20, seed=4)
    rate = patients["label"].mean()
    positives = patients.set_index("patient_id").loc[small, "label"].sum()
    assert abs(positives - rate * 20) <= 1.5  # every prefix keeps the class ratio
    with pytest.raises(ConfigError):
        part.training_subset(patients, len(patients) + 1, seed=0)


@pytest.mark.parametrize("scheme", ["iid", "vendor", "label"])
@pytest.mark.parametrize("k", [2, 3, 5])
def test_partition_covers_every_patient_once(patients, scheme, k):
    subset = patients[patients["patient_id"].isin(part.training_subset(patients, 20, seed=1))]
    assignment = part.partition_patients(subset, k, scheme, seed=7)
    assert set(assignment) == set(subset["patient_id"])
    assert set(assignment.values()) == set(range(k))  # no empty site
    assert assignment == part.partition_patients(subset, k, scheme, seed=7)  # reproducible
    frame = part.partition_frame(subset, assignment)
    by_site = part.site_images(_images(), frame)
    sites_of_patient = pd.concat([f.assign(site=s) for s, f in by_site.items()]).groupby("patient_id")["site"].nunique()
    assert (sites_of_patient == 1).all()  # never split a patient
    assert sum(len(f) for f in by_site.values()) == subset["n_images"].sum()


def test_iid_sites_are_balanced(patients):
    assignment = part.partition_patients(patients, 3, "iid", seed=0)
    frame = part.partition_frame(patients, assignment)
    sizes = frame.groupby("site").size()
    positives = frame.groupby("site")["label"].sum()
    assert sizes.max() - sizes.min() <= 1
    assert positives.max() - positives.min() <= 1


def test_vendor_partition_keeps_vendors_apart(patients):
    assignment = part.partition_patients(patients, 3, "vendor", seed=0)
    frame = part.partition_frame(patients, assignment)
    assert (frame.groupby("site")["vendor"].nunique() == 1).all()
    # more sites than vendors: a vendor is shared, but each site still holds one vendor
    assignment5 = part.partition_patients(patients, 5, "vendor", seed=0)
    frame5 = part.partition_frame(patients, assignment5)
    assert frame5["site"].nunique() == 5 and (frame5.groupby("site")["vendor"].nunique() == 1).all()


def test_label_skew_differs_between_sites(patients):
    assignment = part.partition_patients(patients, 3, "label", seed=0, alpha=0.3)
    rates = part.partition_frame(patients, assignment).groupby("site")["label"].mean()
    assert rates.max() - rates.min() > 0.15


def test_partition_round_trip_and_errors(tmp_path, patients):
    frame = part.partition_frame(patients, part.partition_patients(patients, 2, "iid", seed=0))
    part.save_partition(frame, tmp_path / "k2.csv")
    loaded = part.load_partition(tmp_path / "k2.csv")
    pd.testing.assert_frame_equal(loaded[["patient_id", "site"]], frame[["patient_id", "site"]])
    with pytest.raises(ConfigError, match="cannot split"):
        part.partition_patients(patients.head(3), 5, "iid")
    with pytest.raises(ConfigError, match="unknown partition scheme"):
        part.partition_patients(patients, 2, "random")
    with pytest.raises(ConfigError, match="needs a 'site' column"):
        part.partition_patients(patients, 2, "site")


def test_materialised_sites_train_on_all_their_patients(tmp_path):
    """Site folders: relative manifest paths, saved split = own patients train + a share of validation."""
    from mammo_fl.simulations.sites import materialise_sites

    images = _images(12, seed=5)
    images["image_path"] = [str(tmp_path / "data" / f"{i}.dcm") for i in images["image_id"]]
    (tmp_path / "data").mkdir()
    for path in images["image_path"]:
        open(path, "wb").close()
    pts = part.patient_table(images)
    val_ids = set(part.training_subset(pts, 4, seed=0))
    val = images[images["patient_id"].isin(val_ids)]
    train = images[~images["patient_id"].isin(val_ids)]
    train_pts = pts[~pts["patient_id"].isin(val_ids)]
    frame = part.partition_frame(train_pts, part.partition_patients(train_pts, 2, "iid", seed=0))
    by_site = part.site_images(train, frame)
    folders = materialise_sites(by_site, tmp_path / "sites", val, seed=0)
    assert [f.name for f in folders] == ["site_00", "site_01"]
    seen_val: set[str] = set()
    for folder in folders:
        manifest = pd.read_csv(folder / "manifest.csv", dtype=str)
        assert not any(p.startswith("/") for p in manifest["image_path"])  # relative to the site folder
        assert all((folder / p).resolve().is_file() for p in manifest["image_path"])
        split = pd.read_csv(folder / ".mammo-fl" / "split.csv", dtype=str)
        own = set(frame[frame["site"] == folder.name]["patient_id"])
        assert set(split[split["split"] == "train"]["patient_id"]) == own
        share = set(split[split["split"] == "val"]["patient_id"])
        assert share and share <= val_ids and not share & seen_val  # validation dealt, never repeated
        seen_val |= share
    assert seen_val == val_ids  # the shares add up to the central validation set
