"""`mammo-server report`: one self-contained HTML file from a run folder (written here as the round loop
writes it, without Flower). The real-run + headless-browser check is in test_coordinator_e2e.py (slow)."""

from __future__ import annotations

import re

import pandas as pd
import pytest
from federation_support import make_checkpoint
from run_fixtures import SITES, make_run

from mammo_fl.server.cli import main as server_main
from mammo_fl.server.report import write_report
from mammo_fl.server.report_data import gather


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("report") / "run"
    root.mkdir()
    make_run(root, rounds=3, model=make_checkpoint(root.parent / "init.pt"))
    return root


def test_report_holds_every_site_the_final_auc_and_its_provenance(run, tmp_path):
    out = write_report(run, tmp_path / "report.html", bootstrap=300)
    html = out.read_text()
    final_auc = float(pd.read_csv(run / "metrics.csv")["pooled_auc"].iloc[-1])
    assert f'id="final-auc">{final_auc:.4f}<' in html
    for site in SITES:
        assert f'data-site="{site}"' in html
    assert "weight &#39;top.0.weight&#39; has 3 NaN/Inf value(s)" in html and "node-404" in html  # rejected, dropped
    assert "ab" * 32 in html  # Flower's FAB hash from the started event
    assert "SHA-256" in html and "final.pt" in html and "max-steps=2" in html
    # self-contained: embedded PNGs, nothing fetched, no script
    assert re.findall(r'<img [^>]*src="data:image/png;base64,', html) and "<script" not in html
    assert not re.search(r'(src|href)="(http|//)', html)


def test_sites_counts_add_up_and_cis_bracket_the_auc(run):
    data = gather(run, bootstrap=300)
    total = data.pooled_counts
    assert total is not None
    assert sum(s.counts.tp for s in data.sites) == total.tp and sum(s.counts.fp for s in data.sites) == total.fp
    assert total.spec >= 0.9  # the default target, met on the pooled histograms
    last = data.rounds[-1]
    assert last.pooled.ci[0] < last.pooled.auc < last.pooled.ci[1]
    assert all(r.sites[s].ci[0] <= r.sites[s].auc <= r.sites[s].ci[1] for r in data.rounds for s in r.sites)
    assert [s.train_examples for s in data.sites] == [40, 50, 60]
    assert data.final is not None and data.final.operating_point["threshold"] == pytest.approx(last.threshold)
    assert [(r.evaluated_by, r.n_sites) for r in data.rounds] == [("round 2", 3), ("round 3", 3), ("final", 3)]


def test_report_of_an_unfinished_run_shows_the_newest_evaluated_model(run, tmp_path):
    """One message per round: the newest model has no evaluation until the next round; the report's
    per-site figures and ROC are those of the newest model that has one."""
    import json
    import shutil

    going = tmp_path / "going"
    shutil.copytree(run, going)
    rows = json.loads((going / "metrics.json").read_text())
    for key in [k for k in rows[-1] if k.startswith(("auc_", "sens", "spec", "pooled", "threshold", "eval"))]:
        rows[-1][key] = None
    (going / "metrics.json").write_text(json.dumps(rows))
    data = gather(going, bootstrap=50)
    assert data.final_row["round"] == 2 and data.roc is not None
    html = write_report(going, tmp_path / "going.html", bootstrap=50).read_text()
    assert "<td>round 3</td>" in html and "evaluated by" in html


def test_report_cli_and_one_line_errors(run, tmp_path, capsys):
    out = tmp_path / "r.html"
    assert server_main(["report", str(run), "--out", str(out), "--bootstrap", "50"]) == 0
    assert out.exists() and "wrote" in capsys.readouterr().out
    assert server_main(["report", str(tmp_path / "missing")]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "run folder not found" in line
    assert server_main(["report", str(tmp_path)]) == 2  # a folder that is no run folder
    assert "not a mammo-server run folder" in capsys.readouterr().err


def test_report_of_a_run_without_histograms(run, tmp_path):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(run, old)
    (old / "histograms.npz").unlink()
    (old / "final.pt").unlink()
    html = write_report(old, tmp_path / "old.html", bootstrap=50).read_text()
    assert "kept no score histograms" in html and "no final.pt" in html
    for site in SITES:
        assert site in html
