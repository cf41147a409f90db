"""The safeguards experiment's driver: arguments refused in one line, tables of earlier invocations kept
(the arms themselves are Flower simulations: tests/test_safeguards_simulation.py, slow)."""

from __future__ import annotations

import csv

import pytest

from mammo_fl.simulations import safeguards_study as study


def test_unknown_arm_and_too_few_sites_are_one_line_errors(tmp_path, capsys) -> None:
    assert study.main(["--out", str(tmp_path), "--arms", "clean,nope"]) != 0
    assert study.main(["--out", str(tmp_path), "--arms", "clean", "--sites", "2"]) != 0
    err = capsys.readouterr().err
    assert "unknown arm(s) nope" in err and "--sites 2" in err and "Traceback" not in err


def test_a_table_from_before_the_sites_column_reads_as_three_sites(tmp_path) -> None:
    path = tmp_path / "safeguards.csv"
    columns = [c for c in study.COLUMNS if c != "sites"]
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerow({c: "" for c in columns} | {"arm": "clean", "pooled_auc": "0.88", "epsilon": "nan"})
        writer.writerow({c: "" for c in columns} | {"arm": "retired-arm", "pooled_auc": "0.5"})
    table = study._read_table(path)
    assert list(table) == [("clean", 3)]
    row = table[("clean", 3)]
    assert row["sites"] == 3 and row["pooled_auc"] == pytest.approx(0.88)
    assert sorted([("krum-clean", 5), ("clean", 5), ("dp-0.1", 3)], key=study._order) == [
        ("dp-0.1", 3), ("clean", 5), ("krum-clean", 5)]
