"""One `mammo-sim` invocation: settings -> source model -> target data -> grid -> result files."""

from __future__ import annotations

import logging
import os
import time
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd

from mammo_fl.common.utils.config import load_config
from mammo_fl.common.utils.device import select_device, set_cpu_threads
from mammo_fl.common.utils.errors import ConfigError, DataError
from mammo_fl.simulations.experiment import TransferExperiment
from mammo_fl.simulations.partition import check_grouping, patient_table
from mammo_fl.simulations.plot import plot_transfer_curves
from mammo_fl.simulations.results import environment_record, format_table, summary_table, write_run_record
from mammo_fl.simulations.runners.scoring import ExperimentData
from mammo_fl.simulations.runners.federated import run_federated
from mammo_fl.simulations.settings import SimSettings, parse_settings, target_vendors
from mammo_fl.simulations.source import resolve_source_model
from mammo_fl.simulations.target import TargetData, load_target

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    env = os.environ.get("MAMMO_FL_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "mammo-fl"


def _prepare_images(target: TargetData, preprocessing: dict[str, Any], cache_root: Path, record: dict) -> tuple:
    """Build the image cache at the source model's geometry; unreadable images are skipped and reported."""
    from mammo_fl.common.imaging.cache import ImageCache, filter_readable
    from mammo_fl.common.imaging.geometry import PreprocessSettings

    cache = ImageCache(cache_root / "images", PreprocessSettings.from_dict(preprocessing))
    images, skipped = filter_readable(target.images, cache, progress=True)
    for path, reason in skipped[:10]:
        print(f"mammo-sim: skipped {path}: {reason}")
    if len(skipped) > 10:
        print(f"mammo-sim: ... and {len(skipped) - 10} more skipped images")
    record["skipped_images"] = [{"path": path, "reason": reason} for path, reason in skipped]
    return cache, images


def _split(images: pd.DataFrame, split: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    side = dict(zip(split["patient_id"].astype(str), split["split"].astype(str)))
    which = images["patient_id"].astype(str).map(side)
    train = images[which == "train"].reset_index(drop=True)
    val = images[which.isin(["val", "test"])].reset_index(drop=True)
    if train.empty or val.empty:
        raise DataError(None, f"target split has {len(train)} training and {len(val)} validation images; need both")
    if val["label"].nunique() < 2:
        raise DataError(None, "the validation set holds a single class; AUC is undefined")
    return train, val


def run_simulation_study(
    preset: str,
    out_dir: Path,
    overrides: list[str] | None = None,
    model: Path | None = None,
    inbreast: Path | None = None,
    sites_dir: Path | None = None,
    cache_dir: Path | None = None,
    run_config: dict[str, Any] | None = None,
) -> pd.DataFrame:
    """Run the whole study and write the result files; returns the long results table.

    `run_config`: extra Flower run-config keys for the federated arm (strategy, dp.*, screening.*, test-faults).
    """
    started = time.perf_counter()
    settings: SimSettings = parse_settings(load_config(preset, "sim", overrides), preset=preset)
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create output directory {out_dir}: {exc.strerror}") from None
    cache_root = Path(cache_dir) if cache_dir else default_cache_dir()
    exp = settings.experiment
    set_cpu_threads(exp.torch_threads)
    device = select_device(exp.device)
    timings: dict[str, float] = {}
    record: dict[str, Any] = {
        "command": "mammo-sim", "preset": preset, "overrides": list(overrides or []),
        "settings": settings.to_dict(), "run_config": dict(run_config or {}), "device": str(device),
        "cache_dir": str(cache_root),
        "environment": environment_record(), "timings": timings, "status": "running",
    }
    run_json = out_dir / "run.json"
    write_run_record(run_json, record)

    t = time.perf_counter()
    source = resolve_source_model(model, settings.source, cache_root, device)
    timings["source_model"] = round(time.perf_counter() - t, 2)
    record["source_model"] = source.describe()
    how = "built" if source.built else "cached" if source.cached else "given"
    source_auc = source.details.get("source_metrics", {}).get("test_auc")
    quality = f"; source test AUC {source_auc:.3f}" if isinstance(source_auc, (int, float)) else ""
    print(f"mammo-sim: source model {source.path} ({how}{quality})")

    t = time.perf_counter()
    target = load_target(inbreast, sites_dir, settings.target, cache_root, vendors=target_vendors(settings))
    cache, images = _prepare_images(target, source.preprocessing, cache_root, record)
    train, val = _split(images, target.split)
    if exp.partition in ("vendor", "site"):  # fail now, not in every federated job
        check_grouping(patient_table(train), exp.partition, max(exp.k_sites))
    timings["target_data"] = round(time.perf_counter() - t, 2)
    record["target"] = {
        **target.description, "train_patients": int(train["patient_id"].nunique()), "train_images": len(train),
        "val_patients": int(val["patient_id"].nunique()), "val_images": len(val),
        "val_positive_images": int(val["label"].sum()),
    }
    target.split.to_csv(out_dir / "split.csv", index=False)
    print(
        f"mammo-sim: target {target.description.get('kind')}: {len(train)} training images "
        f"({record['target']['train_patients']} patients), {len(val)} validation images "
        f"({record['target']['val_patients']} patients, fixed)"
    )

    data = ExperimentData(
        source_model=source.path, cache=cache, mean=float(source.preprocessing["mean"]),
        train_images=train, val_images=val, device=device, tta=exp.tta, eval_batch_size=exp.eval_batch_size,
    )
    experiment = TransferExperiment(
        settings, data, out_dir, federated_runner=partial(run_federated, extra_run_config=run_config),
        on_job_done=lambda: write_run_record(run_json, {**record, "grid": experiment.record.__dict__}),
    )
    t = time.perf_counter()
    results = experiment.run()
    timings["grid"] = round(time.perf_counter() - t, 2)

    table = summary_table(results)
    table.to_csv(out_dir / "transfer_table.csv", index=False)
    plot_path = plot_transfer_curves(
        results, out_dir / "transfer_curve.png",
        title=f"mammo-sim {preset}: {target.description.get('kind')} target, {exp.partition} sites",
    )
    timings["total"] = round(time.perf_counter() - started, 2)
    record.update(
        status="done" if not experiment.record.failures else "done with failures",
        grid=experiment.record.__dict__,
        results={"csv": str(out_dir / "transfer_curve.csv"), "table": str(out_dir / "transfer_table.csv"),
                 "plot": str(plot_path)},
        rerun=(f"mammo-sim --preset {preset} --out DIR"
               + (f" --model {model}" if model else "")
               + (f" --inbreast {inbreast}" if inbreast else "")
               + (f" --sites-dir {sites_dir}" if sites_dir else "")
               + "".join(f" --set {o}" for o in overrides or [])
               + "".join(f" --run-config {k}={v!r}" for k, v in (run_config or {}).items())
               + " [--set experiment.sizes=[N] --set experiment.seeds=[S] --set experiment.methods=['M']"
               " --set experiment.k_sites=[K] re-runs one row]"),
    )
    write_run_record(run_json, record)

    print()
    print("Validation AUC by training-set size (Table 4 layout; mean ± sd over seeds, local: over sites and seeds;")
    print("paper T4: Shen et al. 2019 Table 4 on real INbreast, range over its four models, for reference)")
    print(format_table(table))
    if experiment.record.failures:
        print(f"\nmammo-sim: {len(experiment.record.failures)} job(s) failed (see run.json):")
        for failure in experiment.record.failures:
            print(f"  {failure}")
    print(f"\nresults: {out_dir / 'transfer_curve.csv'}")
    print(f"plot: {plot_path}")
    return results
