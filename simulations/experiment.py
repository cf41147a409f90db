"""The transfer-curve experiment (the paper's Table 4, across virtual sites).

For every seed and training-set size: draw a stratified patient subset (nested across
sizes), fine-tune pooled, then for every K partition the subset into K sites at patient
level and run federated fine-tuning and each site alone. Every model is scored on the
same fixed validation set, and its per-image scores are kept (predictions/*.csv) so two arms
can be compared image by image. Rows are appended to the CSV as jobs finish; a failed job is
recorded and reported, and the grid goes on.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pandas as pd
from tqdm import tqdm

from mammo_fl.common.utils.errors import MammoError
from mammo_fl.simulations import partition as part
from mammo_fl.simulations.results import append_rows, result_row
from mammo_fl.simulations.runners.centralised import run_finetuned, run_none
from mammo_fl.simulations.runners.scoring import ExperimentData
from mammo_fl.simulations.settings import SimSettings

log = logging.getLogger(__name__)

CSV_NAME = "transfer_curve.csv"
PREDICTIONS_DIR = "predictions"


@dataclass(frozen=True)
class Job:
    """One cell of the grid; `k_sites` is 0 for none/pooled."""

    method: str
    patients: int
    k_sites: int
    seed: int

    def label(self) -> str:
        k = f" K={self.k_sites}" if self.k_sites else ""
        return f"{self.method}{k} n={self.patients} seed={self.seed}"

    def predictions_name(self, site: str = "") -> str:
        """File of the job's per-image validation scores (one per site for `local`)."""
        if self.method == "none":
            return "none.csv"
        k = f"_k{self.k_sites}" if self.k_sites else ""
        return f"{self.method}{k}_n{self.patients}_seed{self.seed}{'_' + site if site else ''}.csv"


@dataclass
class GridRecord:
    """What run.json keeps about the grid: jobs, timings, partitions, failures."""

    jobs: list[dict[str, Any]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    sizes_used: list[int] = field(default_factory=list)


def effective_sizes(sizes: list[int], available: int) -> list[int]:
    """Sizes above the number of training patients mean "all of them" (the paper's 72 (All))."""
    clipped = sorted({min(s, available) for s in sizes})
    if any(s > available for s in sizes):
        log.warning("training pool has %d patients; larger sizes are run as 'all %d'", available, available)
    return clipped


def plan_jobs(settings: SimSettings, sizes: list[int]) -> list[Job]:
    """The grid in execution order (none first: it is the reference every curve starts from)."""
    exp = settings.experiment
    jobs: list[Job] = []
    if "none" in exp.methods:
        jobs.append(Job("none", 0, 0, 0))
    for seed in exp.seeds:
        for n in sizes:
            if "pooled" in exp.methods:
                jobs.append(Job("pooled", n, 0, seed))
            for k in exp.k_sites:
                if k > n:
                    continue
                if "federated" in exp.methods:
                    jobs.append(Job("federated", n, k, seed))
                if "local" in exp.methods:
                    jobs.append(Job("local", n, k, seed))
    return jobs


FederatedRunner = Callable[..., tuple[float, dict[str, Any]]]


class TransferExperiment:
    """Runs the grid for one prepared dataset and source model."""

    def __init__(self, settings: SimSettings, data: ExperimentData, out_dir: Path,
                 federated_runner: FederatedRunner | None = None, on_job_done: Callable[[], None] | None = None):
        self.settings = settings
        self.data = data
        self.out_dir = out_dir
        self.csv_path = out_dir / CSV_NAME
        self.patients = part.patient_table(data.train_images)
        self.record = GridRecord()
        self.federated_runner = federated_runner
        self.on_job_done = on_job_done or (lambda: None)
        self._none_auc: float | None = None

    # -- data selection -------------------------------------------------------------------
    def subset(self, n: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(patient rows, image rows) of the n-patient training subset for a seed; saved for re-runs."""
        ids = part.training_subset(self.patients, n, seed)
        pts = self.patients[self.patients["patient_id"].astype(str).isin(ids)].reset_index(drop=True)
        imgs = self.data.train_images[self.data.train_images["patient_id"].astype(str).isin(ids)].reset_index(drop=True)
        path = self.out_dir / "partitions" / f"seed{seed}" / f"n{n}" / "patients.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        pts.to_csv(path, index=False)
        return pts, imgs

    def sites(self, pts: pd.DataFrame, imgs: pd.DataFrame, n: int, k: int,
              seed: int) -> tuple[dict[str, pd.DataFrame], dict[str, list[str]]]:
        """Partition the subset into k sites (saved); returns ({site: image rows}, {site: its scanners})."""
        exp = self.settings.experiment
        assignment = part.partition_patients(pts, k, exp.partition, seed, exp.label_alpha)
        frame = part.partition_frame(pts, assignment)
        part.save_partition(frame, self.out_dir / "partitions" / f"seed{seed}" / f"n{n}" / f"k{k}.csv")
        return part.site_images(imgs, frame), part.site_groups(frame, "vendor")

    def predictions(self, job: Job, site: str = "") -> Path:
        return self.out_dir / PREDICTIONS_DIR / job.predictions_name(site)

    # -- the grid --------------------------------------------------------------------------
    def run(self) -> pd.DataFrame:
        if self.csv_path.exists():
            self.csv_path.unlink()  # a run's CSV holds only that run's rows
        shutil.rmtree(self.out_dir / PREDICTIONS_DIR, ignore_errors=True)  # and its scores
        sizes = effective_sizes(self.settings.experiment.sizes, len(self.patients))
        self.record.sizes_used = sizes
        jobs = plan_jobs(self.settings, sizes)
        bar = tqdm(jobs, desc="transfer-curve jobs", unit="job", dynamic_ncols=True)
        cache: dict[tuple[int, int], tuple[pd.DataFrame, pd.DataFrame]] = {}
        for job in bar:
            bar.set_postfix_str(job.label())
            start = time.perf_counter()
            try:
                rows, extra = self._run_job(job, sizes, cache)
                status = "ok"
            except MammoError as exc:
                rows, extra, status = self._failed_rows(job, sizes, str(exc)), {}, "failed"
            except Exception as exc:  # noqa: BLE001 - one broken cell must not lose the grid
                msg = f"{type(exc).__name__}: {exc}".splitlines()[0]
                log.exception("job %s crashed", job.label())
                rows, extra, status = self._failed_rows(job, sizes, msg), {}, "failed"
            if status == "failed":
                self.record.failures.append(f"{job.label()}: {rows[0]['status']}")
                tqdm.write(f"mammo-sim: job {job.label()} failed: {rows[0]['status']}")
            append_rows(self.csv_path, rows)
            self.record.jobs.append(
                {"job": job.label(), "method": job.method, "patients": job.patients, "k_sites": job.k_sites,
                 "seed": job.seed, "status": status, "seconds": round(time.perf_counter() - start, 2), **extra}
            )
            self.on_job_done()
        bar.close()
        from mammo_fl.simulations.results import read_results

        return read_results(self.csv_path)

    def _failed_rows(self, job: Job, sizes: list[int], message: str) -> list[dict[str, Any]]:
        patients = sizes if job.method == "none" else [job.patients]
        status = "failed: " + " ".join(message.split())[:300]
        return [result_row(n, job.method, job.k_sites, job.seed, float("nan"), status=status) for n in patients]

    def _run_job(self, job: Job, sizes: list[int], cache: dict) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        val_n = len(self.data.val_images)
        if job.method == "none":
            auc, secs = run_none(self.data, self.predictions(job))
            # The source model does not depend on the subset: one score, one row per size and seed.
            rows = [result_row(n, "none", 0, s, auc, images=0, val_images=val_n, seconds=secs)
                    for s in self.settings.experiment.seeds for n in sizes]
            return rows, {"auc": auc}
        key = (job.patients, job.seed)
        if key not in cache:
            cache.clear()  # subsets of one (size, seed) only; keeps memory flat
            cache[key] = self.subset(job.patients, job.seed)
        pts, imgs = cache[key]
        ft = self.settings.finetune
        if job.method == "pooled":
            auc, secs = run_finetuned(self.data, imgs, ft, job.seed, self.predictions(job))
            return [result_row(job.patients, "pooled", 0, job.seed, auc, images=len(imgs), val_images=val_n,
                               seconds=secs)], {"auc": auc}
        by_site, scanners = self.sites(pts, imgs, job.patients, job.k_sites, job.seed)
        where = {"site_vendors": scanners} if scanners else {}  # which scanner profile(s) each site got
        if job.method == "local":
            rows = []
            for name, site_imgs in by_site.items():
                auc, secs = run_finetuned(self.data, site_imgs, ft, job.seed, self.predictions(job, name))
                rows.append(result_row(job.patients, "local", job.k_sites, job.seed, auc, site=name,
                                       images=len(site_imgs), val_images=val_n, seconds=secs))
            return rows, {"sites": {r["site"]: r["auc"] for r in rows}, **where}
        if self.federated_runner is None:
            raise MammoError("federated runner not available")
        sites_dir = self.out_dir / "sites" / f"seed{job.seed}_n{job.patients}_k{job.k_sites}"
        auc, info = self.federated_runner(self.data, by_site, sites_dir, self.settings, job.seed,
                                          predictions=self.predictions(job))
        return [result_row(job.patients, "federated", job.k_sites, job.seed, auc, images=len(imgs),
                           val_images=val_n, seconds=info.get("seconds", 0.0))], {**info, **where}
