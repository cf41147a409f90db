"""Run the deployment's ServerApp and ClientApp on Flower's Simulation Engine (Ray).

This follows the path `flwr run` takes for a local simulation (the `flwr-simulation`
process runs the simulation in-process with the app directory
and a fused run config), but in this process, so that:
- the run config reaches the ServerApp *and* every ClientApp (the public
  `run_simulation()` passes an empty run config);
- Ray start-up can be timed apart from the federated rounds;
- nothing detached (local SuperLink, `flwr-simulation` zombies) outlives the call;
- the virtual sites can run on an existing Ray cluster (`ray_address`): the driver connects
  to it instead of starting a private Ray, and disconnects afterwards (the cluster stays up).

The private Flower names this needs live in common/federation/flower_private.py.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mammo_fl.common.federation.flower_private import (
    check_flower_version,
    fused_run_config,
    run_simulation_in_process,
)
from mammo_fl.common.utils.errors import ConfigError, MammoError

log = logging.getLogger(__name__)

# The FAB shim whose pyproject holds the run-config defaults (server/flower_app/pyproject.toml).
APP_DIR = Path(__file__).resolve().parent.parent / "server" / "flower_app"


@dataclass
class SimulationTiming:
    """Where the wall time of one simulation went (seconds)."""

    ray_init: float = 0.0
    total: float = 0.0
    cluster_resources: dict[str, float] = field(default_factory=dict)  # what Ray offered (CPU, GPU, memory, ...)

    @property
    def after_init(self) -> float:
        return max(0.0, self.total - self.ray_init)


def backend_config(num_sites: int, num_cpus: float, num_gpus: float, ray_num_cpus: int, object_store_mb: int,
                   address: str = "") -> dict:
    """Ray resources: one CPU per virtual site by default; a GPU share when GPUs exist.

    `num_gpus < 0` means auto: 0 without GPUs, else the GPU is split evenly over the sites so
    they all train at once. With `address` (an existing cluster) the GPUs counted are the
    cluster's, and the cluster's own CPU and object-store sizes apply.
    """
    gpus = cluster_gpus(address) if address else local_gpus()
    if num_gpus < 0:
        num_gpus = 0.0 if not gpus else round(1.0 / max(1, num_sites), 3)
    init_args: dict[str, Any]
    if address:
        init_args = {"address": address}
    else:
        init_args = {"include_dashboard": False, "object_store_memory": int(object_store_mb) * 1024 * 1024}
        if ray_num_cpus > 0:  # 0 = every core of the host
            init_args["num_cpus"] = int(ray_num_cpus)
        if gpus:
            init_args["num_gpus"] = gpus
    return {"client_resources": {"num_cpus": float(num_cpus), "num_gpus": float(num_gpus)}, "init_args": init_args}


def local_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@functools.lru_cache(maxsize=None)
def cluster_gpus(address: str) -> int:
    """GPUs of an existing Ray cluster (asked once per process); a cluster that cannot be reached is a ConfigError."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    _connect(address)
    try:
        return int(ray.cluster_resources().get("GPU", 0))
    finally:
        ray.shutdown()


def check_ray_address(address: str, timeout_s: float = 10.0) -> None:
    """Ray retries an unreachable GCS for minutes; a TCP probe of HOST:PORT fails in seconds."""
    import socket

    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        if address in ("auto", "local") or address.startswith("ray://"):
            return  # Ray resolves these itself
        raise ConfigError(f"Ray address {address!r} is not HOST:PORT (e.g. 10.0.0.5:6379)")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise ConfigError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}") from None


def _connect(address: str, **kwargs: Any) -> None:
    import ray

    check_ray_address(address)
    try:
        ray.init(address=address, logging_level=logging.WARNING, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"cannot connect to the Ray cluster at {address!r}: {first}") from None


def _init_ray(config: dict[str, Any], threads_per_site: int) -> tuple[float, dict[str, float]]:
    """Start Ray (or connect to the given cluster) ourselves -- Flower reuses an initialised Ray --
    and return the seconds it took and the cluster's resources."""
    import ray

    # Actors inherit the driver's environment: cap torch/OpenMP threads per virtual site.
    os.environ["OMP_NUM_THREADS"] = str(threads_per_site)
    os.environ["MKL_NUM_THREADS"] = str(threads_per_site)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # silences a FutureWarning on CPU hosts
    if ray.is_initialized():
        ray.shutdown()
    start = time.perf_counter()
    runtime_env = {"env_vars": {"OMP_NUM_THREADS": str(threads_per_site), "MKL_NUM_THREADS": str(threads_per_site)}}
    init_args = dict(config["init_args"])
    if "address" in init_args:
        _connect(init_args.pop("address"), runtime_env=runtime_env, log_to_driver=True, **init_args)
    else:
        _start_local_ray(runtime_env=runtime_env, logging_level=logging.WARNING, log_to_driver=True, **init_args)
    seconds = time.perf_counter() - start
    return seconds, {k: float(v) for k, v in ray.cluster_resources().items() if not k.startswith("node:")}


def _start_local_ray(attempts: int = 3, **kwargs: Any) -> None:
    """ray.init, retried: Ray gives its raylet a fixed 30 s to register, which a loaded host can miss."""
    import ray

    for attempt in range(1, attempts + 1):
        try:
            ray.init(**kwargs)
            return
        except Exception as exc:  # noqa: BLE001 - Ray raises a bare Exception for this
            if "timed out during startup" not in str(exc) or attempt == attempts:
                raise
            log.warning("Ray start-up timed out (attempt %d of %d); retrying", attempt, attempts)
            ray.shutdown()


def simulate_federation(
    run_config: dict[str, Any], num_sites: int, backend: dict[str, Any], app_dir: Path = APP_DIR
) -> SimulationTiming:
    """Run one federated fine-tuning with `num_sites` virtual SuperNodes; blocks until done.

    The ServerApp writes its outputs under run_config['out-dir']; errors inside the apps
    surface as MammoError.
    """
    check_flower_version()
    from mammo_fl.client.app import app as client_app
    from mammo_fl.server.app import app as server_app

    if not (app_dir / "pyproject.toml").is_file():
        raise ConfigError(f"Flower app not found: {app_dir}/pyproject.toml")
    fused_run_config(app_dir, run_config)  # unknown keys fail here, before Ray starts
    _quiet_logs()
    threads = max(1, int(backend["client_resources"]["num_cpus"]))
    timing = SimulationTiming()
    start = time.perf_counter()
    timing.ray_init, timing.cluster_resources = _init_ray(backend, threads)
    try:
        run_simulation_in_process(num_supernodes=num_sites, client_app=client_app, server_app=server_app,
                                  backend_config=backend, app_dir=app_dir, run_config=run_config)
    except MammoError:
        raise
    except Exception as exc:  # noqa: BLE001 - Flower wraps app failures in RuntimeError
        cause = exc.__cause__ or exc
        raise MammoError(f"federated simulation failed: {type(cause).__name__}: {cause}") from None
    finally:
        _shutdown_ray()
        timing.total = time.perf_counter() - start
    return timing


def _quiet_logs() -> None:
    """Flower prints its own INFO lines (rounds, AUC); stop them repeating through the root logger."""
    logging.getLogger("flwr").propagate = False
    for name in ("alembic", "ray"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _shutdown_ray() -> None:
    """Flower's backend calls ray.shutdown(); repeat it on error paths so no raylet is left behind.
    Connected to an existing cluster, shutdown only disconnects this driver: the cluster stays up."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
