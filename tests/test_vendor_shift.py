"""Vendor-shifted virtual sites: a multi-scanner synthetic target, the vendor partition, validation by scanner."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
import pydicom
import pytest

from mammo_fl.common.synth.generate import SynthConfig, plan
from mammo_fl.common.synth.plan import deal_vendors
from mammo_fl.common.utils.config import load_config
from mammo_fl.common.utils.errors import ConfigError
from mammo_fl.simulations import partition as part
from mammo_fl.simulations.settings import parse_settings, target_vendors

THREE = ("hologic-selenia", "ge-senographe", "fuji-amulet")


def test_vendors_are_dealt_label_balanced():
    roles = ["pos"] * 31 + ["neg"] * 70 + ["b3"] * 12
    vendor_of = deal_vendors(roles, 3, seed=4)
    for role in ("pos", "neg", "b3"):
        counts = Counter(v for r, v in zip(roles, vendor_of) if r == role)
        assert set(counts) == {0, 1, 2} and max(counts.values()) - min(counts.values()) <= 1
    sizes = Counter(vendor_of).values()
    assert max(sizes) - min(sizes) <= 1


def test_multi_vendor_cohort_is_the_same_cohort_with_other_scanners():
    one = plan(SynthConfig("inbreast", "/tmp/unused", 40, 7, size=(320, 256)).validate())
    mix = plan(SynthConfig("inbreast", "/tmp/unused", 40, 7, size=(320, 256), vendors=THREE).validate())
    assert [(s.patient_id, s.label, s.lesions, s.view) for s in one] == [(s.patient_id, s.label, s.lesions, s.view)
                                                                          for s in mix]
    per_patient = pd.DataFrame({"patient": [s.patient_id for s in mix], "vendor": [s.profile.name for s in mix]})
    assert (per_patient.groupby("patient")["vendor"].nunique() == 1).all()  # one scanner per woman
    assert set(per_patient["vendor"]) == set(THREE)
    assert {s.profile.name for s in one} == {"siemens-mammomat"}


def test_multi_vendor_dataset_writes_each_scanner(tmp_path):
    from synth_fixtures import tiny_dataset

    root = tiny_dataset("inbreast", tmp_path / "mix", patients=6, seed=3, prevalence=0.5,
                        vendors=("hologic-selenia", "fuji-amulet"))
    truth = pd.read_csv(root / "ground_truth.csv", dtype=str)
    assert set(truth["vendor"]) == {"hologic-selenia", "fuji-amulet"}
    assert (truth.groupby("patient_id")["vendor"].nunique() == 1).all()
    makers = {}
    for rel, vendor, photometric in zip(truth["image_path"], truth["vendor"], truth["photometric"]):
        ds = pydicom.dcmread(root / rel, stop_before_pixels=True)
        makers.setdefault(vendor, set()).add(str(ds.Manufacturer))
        assert ds.PhotometricInterpretation == photometric
    assert makers == {"hologic-selenia": {"HOLOGIC, Inc."}, "fuji-amulet": {"FUJIFILM Corporation"}}
    assert set(truth.loc[truth["vendor"] == "fuji-amulet", "photometric"]) == {"MONOCHROME1"}  # its share is 1


@pytest.mark.parametrize("kwargs, message", [
    ({"layout": "manifest", "vendors": THREE}, "needs --layout inbreast"),
    ({"vendors": ("hologic-selenia", "hologic-selenia")}, "twice"),
    ({"vendors": ("hologic-selenia", "howtek-film")}, "not a ffdm profile"),
    ({"vendors": THREE, "vendor": "ge-senographe"}, "not both"),
    ({"vendors": ("hologic-selenia", "acme")}, "unknown vendor profile"),
])
def test_bad_vendor_mix_is_a_config_error(kwargs, message):
    cfg = {"layout": "inbreast", "out_dir": "/tmp/unused", "patients": 10, **kwargs}
    with pytest.raises(ConfigError, match=message):
        SynthConfig(**cfg).validate()


def _patients(vendors: tuple[str, ...], n: int = 60, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n):
        vendor, positive = vendors[p % len(vendors)], rng.random() < 0.3
        rows += [{"image_id": f"P{p}_{j}", "patient_id": f"P{p:03d}", "vendor": vendor,
                  "label": int(positive and j == 0), "image_path": f"/x/P{p}_{j}.dcm"} for j in range(4)]
    return pd.DataFrame(rows)


@pytest.mark.parametrize("k", [2, 3])
def test_vendor_sites_differ_in_scanner_and_never_split_a_patient(k):
    images = _patients(THREE)
    patients = part.patient_table(images)
    frame = part.partition_frame(patients, part.partition_patients(patients, k, "vendor", seed=1))
    scanners = part.site_groups(frame, "vendor")
    assert sorted(scanners) == [part.site_name(i) for i in range(k)]
    held = [v for vs in scanners.values() for v in vs]
    assert len(held) == len(set(held)) == 3  # every scanner at exactly one site: the sites' looks differ
    by_site = part.site_images(images, frame)
    owner = pd.concat([f.assign(site=s) for s, f in by_site.items()]).groupby("patient_id")["site"].nunique()
    assert (owner == 1).all() and len(owner) == len(patients)  # no patient in two sites


def test_vendor_partition_of_one_scanner_is_refused():
    patients = part.patient_table(_patients(("siemens-mammomat",)))
    with pytest.raises(ConfigError, match="needs patients of >= 2 vendors.*target.vendors"):
        part.partition_patients(patients, 3, "vendor")
    part.partition_patients(patients, 1, "vendor")  # one site: nothing to shift


def test_validation_goes_to_the_site_with_the_patients_scanner(tmp_path):
    from mammo_fl.simulations.sites import materialise_sites, validation_shares

    images = _patients(THREE, n=30)
    images["image_path"] = [str(tmp_path / f"{i}.dcm") for i in images["image_id"]]
    for path in images["image_path"]:
        open(path, "wb").close()
    patients = part.patient_table(images)
    val_ids = set(part.training_subset(patients, 9, seed=0))
    val = images[images["patient_id"].isin(val_ids)]
    train_pts = patients[~patients["patient_id"].isin(val_ids)]
    frame = part.partition_frame(train_pts, part.partition_patients(train_pts, 3, "vendor", seed=0))
    by_site = part.site_images(images[~images["patient_id"].isin(val_ids)], frame)
    materialise_sites(by_site, tmp_path / "sites", val, seed=0)
    shares = validation_shares(tmp_path / "sites")
    assert set().union(*shares.values()) == val_ids
    vendor_of = dict(zip(patients["patient_id"], patients["vendor"]))
    for site, ids in shares.items():
        assert {vendor_of[p] for p in ids} <= set(by_site[site]["vendor"])  # own scanner only


def test_vendor_partition_gets_a_scanner_per_site_by_default():
    settings = parse_settings(load_config("quick", "sim", ["experiment.partition='vendor'"]))
    assert target_vendors(settings) == ["hologic-selenia", "ge-senographe", "siemens-mammomat"]
    full = parse_settings(load_config("full", "sim", ["experiment.partition='vendor'"]))
    assert len(target_vendors(full)) == 5
    assert target_vendors(parse_settings(load_config("quick", "sim"))) == []  # iid: the one-scanner target
    given = parse_settings(load_config("quick", "sim", [f"target.vendors={list(THREE)!r}"]))
    assert target_vendors(given) == list(THREE)


@pytest.mark.parametrize("override, message", [
    ("target.vendors=['acme','ge-senographe']", "unknown vendor profile"),
    ("target.vendors=['ge-senographe']", ">= 2 profiles"),
    ("finetune.server_momentum=0.9", "only with finetune.strategy = 'fedavgm'"),
    ("finetune.server_lr=0.0", "server_lr must be > 0"),
])
def test_bad_sim_settings_are_config_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        parse_settings(load_config("quick", "sim", [override]))
