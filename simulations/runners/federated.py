"""Federated arm: the deployment's ServerApp/ClientApp on Flower's Simulation Engine.

Sites are materialised as folders with manifest.csv (what a real hospital's SuperNode
reads), the ServerApp writes final.pt to the run's out-dir, and that model is scored by
the same code as the other arms. With FedBN there is no single final model: each site
keeps its own BatchNorm, so each validation image is scored by the model of the site it
was dealt to (its own scanner's site under a vendor partition), as the sites would use it.
"""

from __future__ import annotations

import csv
import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mammo_fl.common.federation.round_config import finetune_to_keys
from mammo_fl.simulations.flower_sim import backend_config, simulate_federation
from mammo_fl.simulations.runners.scoring import (
    ExperimentData, load_model, predict_images, save_predictions, validation_auc,
)
from mammo_fl.simulations.settings import FineTuneSettings, SimSettings
from mammo_fl.simulations.sites import materialise_sites, validation_shares


def federation_run_config(ft: FineTuneSettings, k: int, seed: int, sites_dir: Path, out_dir: Path,
                          source: Path, device: str, threads: int, round_timeout: float = 3600.0) -> dict[str, Any]:
    """Run-config keys of server/flower_app/pyproject.toml for one federated fine-tuning."""
    return {
        "sites-dir": str(sites_dir),
        "out-dir": str(out_dir),
        "initial-model": str(source),
        "num-server-rounds": ft.rounds,
        "min-sites": k,
        "strategy": ft.strategy,
        "fedbn": ft.fedbn,
        "server-lr": float(ft.server_lr),
        "server-momentum": float(ft.server_momentum),
        "lr-decay": float(ft.lr_decay),
        **finetune_to_keys(dataclasses.replace(ft.local, seed=seed)),
        "device": device,
        "num-threads": threads,
        "round-timeout": float(round_timeout),
        "evaluate-initial": False,  # the central validation below is what the study compares
    }


def _read_round_timings(out_dir: Path) -> dict[str, float]:
    """Sum the ServerApp's per-round timings (metrics.csv): round wall, slowest site's training, overhead."""
    path = out_dir / "metrics.csv"
    sums = {"round_seconds": 0.0, "max_site_train_seconds": 0.0, "sum_site_train_seconds": 0.0,
            "overhead_seconds": 0.0, "evaluate_seconds": 0.0}
    if not path.is_file():
        return sums
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            for key in sums:
                try:
                    sums[key] += float(row.get(key) or 0.0)
                except ValueError:
                    pass
    return {k: round(v, 2) for k, v in sums.items()}


def _site_batchnorm(site_dir: Path) -> dict[str, Any]:
    """The BatchNorm state a FedBN site kept after its last round (client/local.py save_local_bn)."""
    import torch

    from mammo_fl.client.site import STATE_SUBDIR
    from mammo_fl.common.utils.errors import MammoError

    files = sorted((site_dir / STATE_SUBDIR / "fedbn").glob("*.pt"))
    if len(files) != 1:
        raise MammoError(f"FedBN site {site_dir.name}: expected one saved BatchNorm state, found {len(files)}")
    return torch.load(files[0], map_location="cpu", weights_only=True)


def score_fedbn(final: Path, sites_dir: Path, data: ExperimentData) -> np.ndarray:
    """Validation scores with each site's own BatchNorm on the validation images dealt to that site."""
    shares = validation_shares(sites_dir)
    pid = data.val_images["patient_id"].astype(str)
    scores = np.full(len(data.val_images), np.nan)
    for site, patients in shares.items():
        model = load_model(final, data.device)
        model.load_state_dict(_site_batchnorm(sites_dir / site), strict=False)
        rows = pid.isin(patients).to_numpy()
        if rows.any():
            scores[rows] = predict_images(model, data, data.val_images[rows].reset_index(drop=True))
    if np.isnan(scores).any():
        from mammo_fl.common.utils.errors import MammoError

        raise MammoError(f"FedBN scoring: {int(np.isnan(scores).sum())} validation image(s) belong to no site")
    return scores


def run_federated(data: ExperimentData, by_site: dict[str, pd.DataFrame], sites_dir: Path,
                  settings: SimSettings, seed: int, predictions: Path | None = None,
                  extra_run_config: dict[str, Any] | None = None) -> tuple[float, dict[str, Any]]:
    """Federated fine-tuning over `by_site`; returns (validation AUC, timing/info dict).

    `extra_run_config` (mammo-sim --run-config) overrides/extends the run config, e.g. dp.* keys."""
    from mammo_fl.common.utils.errors import MammoError

    start = time.perf_counter()
    k = len(by_site)
    materialise_sites(by_site, sites_dir, data.val_images, cache_root=Path(data.cache.root), seed=seed)
    run_dir = sites_dir.parent.parent / "federated" / sites_dir.name
    fl = settings.flower
    backend = backend_config(k, fl.client_num_cpus, fl.client_num_gpus, fl.ray_num_cpus, fl.object_store_mb,
                             address=fl.ray_address)
    device = "cuda" if backend["client_resources"]["num_gpus"] > 0 else "cpu"
    run_config = federation_run_config(
        settings.finetune, k, seed, sites_dir, run_dir, data.source_model, device,
        threads=max(1, int(fl.client_num_cpus)), round_timeout=fl.round_timeout_s,
    )
    run_config.update(extra_run_config or {})
    timing = simulate_federation(run_config, k, backend)
    final = run_dir / "final.pt"
    if not final.is_file():
        raise MammoError(f"federated run wrote no final model ({final}); see {run_dir}")
    if settings.finetune.fedbn:
        scores = score_fedbn(final, sites_dir, data)
    else:
        scores = predict_images(load_model(final, data.device), data, data.val_images)
    if predictions is not None:
        save_predictions(predictions, data, scores)
    info = {
        "seconds": round(time.perf_counter() - start, 2),
        "ray_init_seconds": round(timing.ray_init, 2),
        "simulation_seconds": round(timing.total, 2),
        "ray": {"address": fl.ray_address or "local", "cluster_resources": timing.cluster_resources,
                "client_resources": backend["client_resources"]},
        "run_dir": str(run_dir),
        "sites": {name: len(frame) for name, frame in by_site.items()},
        **_read_round_timings(run_dir),
    }
    return validation_auc(data, scores), info
