"""Generic site manifest: happy path and every validation error."""

from __future__ import annotations

from pathlib import Path

import pytest
from data_fixtures import breast_phantom, make_site, write_dicom

from mammo_fl.common.imaging.adapters import read_manifest
from mammo_fl.common.utils.errors import DataError
from mammo_fl.common.imaging.index import IMAGE_COLUMNS, load_index, write_index


def rows(n=4):
    return [
        {"image_path": f"pat{i // 2}/img{i}.dcm", "patient_id": f"p{i // 2}", "label": ["0", "1", "benign", "Malignant"][i % 4],
         "laterality": ["L", "R", "LEFT", "right"][i % 4], "view": ["CC", "MLO", "ML", "cc"][i % 4], "vendor": "GE"}
        for i in range(n)
    ]


def test_valid_manifest(tmp_path):
    site = make_site(tmp_path / "site", rows())
    df = read_manifest(site)
    assert list(df.columns) == IMAGE_COLUMNS + ["vendor"]
    assert df["label"].tolist() == [0, 1, 0, 1]
    assert df["laterality"].tolist() == ["L", "R", "L", "R"]
    assert df["view"].tolist() == ["CC", "MLO", "MLO", "CC"]
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in df["image_path"])
    assert df["image_id"].is_unique and df["image_id"].iloc[0] == "pat0_img0"
    # round trip through the index files
    write_index(tmp_path / "idx", df)
    assert load_index(tmp_path / "idx").images["label"].tolist() == [0, 1, 0, 1]


def test_optional_columns_come_from_the_header(tmp_path):
    site = tmp_path / "site"
    write_dicom(site / "a.dcm", breast_phantom(), laterality="R", view="MLO")
    (site / "manifest.csv").write_text("image_path,patient_id,label\na.dcm,p1,normal\n")
    df = read_manifest(site)
    assert (df.at[0, "laterality"], df.at[0, "view"], df.at[0, "label"]) == ("R", "MLO", 0)


def error_for(site) -> str:
    with pytest.raises(DataError) as info:
        read_manifest(site)
    msg = str(info.value)
    assert "\n" not in msg and "manifest.csv" in msg
    return msg


def test_unknown_label_values_listed(tmp_path):
    r = rows()
    r[1]["label"], r[3]["label"] = "cancer", "2"
    msg = error_for(make_site(tmp_path / "s", r))
    assert "unknown label" in msg and "3 ('cancer')" in msg and "5 ('2')" in msg


def test_duplicated_rows(tmp_path):
    r = rows(3)
    r.append(dict(r[0]))
    msg = error_for(make_site(tmp_path / "s", r))
    assert "duplicated rows" in msg and "pat0/img0.dcm" in msg and "lines 2, 5" in msg


def test_same_image_with_different_labels(tmp_path):
    r = rows(3)
    r.append(dict(r[1], label="0"))
    msg = error_for(make_site(tmp_path / "s", r))
    assert "different labels" in msg and "pat0/img1.dcm" in msg and "3, 5" in msg


def test_missing_files(tmp_path):
    site = make_site(tmp_path / "s", rows())
    (site / "pat1" / "img3.dcm").unlink()
    msg = error_for(site)
    assert "missing image file" in msg and "5 (pat1/img3.dcm)" in msg


def test_several_problems_reported_together(tmp_path):
    r = rows()
    r[0]["label"] = "maybe"
    r[2]["view"] = "XCCL"
    r[3]["patient_id"] = ""
    msg = error_for(make_site(tmp_path / "s", r))
    assert "unknown label" in msg and "view must be CC or MLO" in msg and "empty patient_id at line(s) 5" in msg


def test_missing_column_and_missing_manifest(tmp_path):
    site = tmp_path / "s"
    site.mkdir()
    assert "no manifest.csv" in error_for(site)
    (site / "manifest.csv").write_text("image_path,label\na.dcm,1\n")
    assert "missing column(s) patient_id" in error_for(site)
