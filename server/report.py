"""`mammo-server report RUNDIR --out report.html`: one self-contained HTML file for the clinical leads.

Provenance (checkpoint, settings, app hash), per-site data counts, pooled and per-site AUC per
round with bootstrap confidence intervals (from the kept histograms), the pooled ROC with the
operating point, per-site sensitivity/specificity there, rejected or dropped sites and the
settings. Plots are embedded; the file loads nothing else and runs no script.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from mammo_fl.common.utils.errors import ConfigError
from mammo_fl.server.html import render
from mammo_fl.server.report_data import gather
from mammo_fl.server.report_plots import auc_plot, roc_plot


def write_report(root: Path, out: Path, bootstrap: int = 2000, seed: int = 0) -> Path:
    """Render the report of run folder `root` into `out` (written atomically)."""
    data = gather(root, bootstrap=bootstrap, seed=seed)
    html = render("report.html", d=data, roc_png=roc_plot(data), auc_png=auc_plot(data), generated=time.time())
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(html)
    os.replace(tmp, out)
    return out


def add_report_arguments(p: argparse.ArgumentParser) -> None:
    """The `report` subcommand's arguments (for a subcommand parser: then call run_report(args))."""
    p.add_argument("rundir", type=Path, help="the run folder of a mammo-server run (--out of that run)")
    p.add_argument("--out", type=Path, default=None, help="HTML file to write (default RUNDIR/report.html)")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples for the AUC CIs (default 2000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")


def run_report(args: argparse.Namespace) -> int:
    if args.bootstrap < 1:
        raise ConfigError(f"--bootstrap must be >= 1, got {args.bootstrap}")
    out = write_report(args.rundir, args.out or args.rundir / "report.html", args.bootstrap, args.seed)
    print(f"wrote {out} (open it in a browser: file://{out.resolve()})")
    return 0


def report_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="mammo-server report",
                                description="Write the run report: one self-contained HTML file for the clinical leads.")
    add_report_arguments(p)
    return run_report(p.parse_args(argv))
