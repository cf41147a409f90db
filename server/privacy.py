"""Differential privacy at the coordinator: Gaussian noise on the aggregate and the privacy ledger.

Central DP (dp.noise-at = server) is Flower's `DifferentialPrivacyClientSideFixedClipping` wrapper
around our FedAvg/FedProx object: the sites clip their update to `dp.clip-norm` (client/site_privacy.py),
the wrapper averages them and adds N(0, (noise-multiplier x clip-norm / sites)^2) to every float
weight. Sites are weighted uniformly under DP (with num-examples weights one site's influence, and
so the sensitivity, would be its weight share x clip-norm, not clip-norm / sites).

The ledger records every noised release (updates: one per round; histograms: one per site per
evaluation round) as its effective noise multiplier (noise std / sensitivity), and epsilon at
`dp.delta` comes from dp-accounting's RDP accountant composed over them. Neighbouring datasets:
central DP = one site's data added or removed (sensitivity of the mean: clip-norm / sites);
dp.noise-at = site = one site's data replaced (sensitivity 2 x clip-norm, hence multiplier / 2);
histograms = one image added or removed (one count, sensitivity 1). The ledger is written to the run
folder as soon as a noised model exists (before it is sent out for evaluation), and is never rolled
back on --resume: a round redone after a crash spent privacy twice.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mammo_fl.common.utils.errors import MammoError
from mammo_fl.server.safeguard_settings import PrivacySettings
from mammo_fl.server.strategy import aggregate
from mammo_fl.server.validate import Screened

UPDATE = "update"
HISTOGRAM = "histogram"


@dataclass(frozen=True)
class Release:
    round: int
    kind: str  # update | histogram
    noise_multiplier: float  # effective: noise std / sensitivity
    sites: int


class PrivacyLedger:
    """Every noised release of a run; epsilon via dp-accounting (RDP, Gaussian mechanism, no sampling)."""

    def __init__(self, releases: list[Release] | None = None) -> None:
        self.releases: list[Release] = list(releases or [])

    def record(self, rnd: int, kind: str, noise_multiplier: float, sites: int) -> None:
        self.releases.append(Release(rnd, kind, float(noise_multiplier), int(sites)))

    def count(self, kind: str) -> int:
        return sum(r.kind == kind for r in self.releases)

    def epsilon(self, kind: str, delta: float) -> float | None:
        """Cumulative epsilon at `delta` of the releases of one kind (None before the first)."""
        from dp_accounting import NeighboringRelation, dp_event
        from dp_accounting.rdp import RdpAccountant

        mine = [r for r in self.releases if r.kind == kind]
        if not mine:
            return None
        accountant = RdpAccountant(neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE)
        for release in mine:
            accountant.compose(dp_event.GaussianDpEvent(release.noise_multiplier))
        return float(accountant.get_epsilon(delta))

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"releases": [asdict(r) for r in self.releases]}, indent=1))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> PrivacyLedger:
        if not path.exists():
            return cls()
        try:
            raw = json.loads(path.read_text())
            return cls([Release(**r) for r in raw["releases"]])
        except (ValueError, KeyError, TypeError) as exc:
            raise MammoError(f"{path}: unreadable privacy ledger ({exc}); it must not be lost, restore it") from None


def update_multiplier(dp: PrivacySettings) -> float:
    """Effective noise multiplier of one round's update release (see the module docstring)."""
    return dp.noise_multiplier if dp.noise_at == "server" else dp.noise_multiplier / 2.0


def fresh_numpy_seed() -> None:
    """Flower's noise is drawn from numpy's global RNG, which training code in the same process may have
    seeded with a known value (simulation); reseed it from 128 bits of OS entropy before each release."""
    np.random.seed(np.frombuffer(os.urandom(16), dtype=np.uint32))


def dp_aggregate(strategy: Any, rnd: int, global_arrays: dict[str, np.ndarray], accepted: list[Screened],
                 dp: PrivacySettings) -> dict[str, np.ndarray]:
    """Central DP: uniform mean of the (clipped) updates + Gaussian noise, by Flower's DP wrapper."""
    from flwr.serverapp.strategy import DifferentialPrivacyClientSideFixedClipping

    uniform = [dataclasses.replace(r, metrics={**r.metrics, "num-examples": 1}) for r in accepted]
    wrapper = DifferentialPrivacyClientSideFixedClipping(strategy, dp.noise_multiplier, dp.clip_norm, len(accepted))
    fresh_numpy_seed()
    return clamp_variances(aggregate(wrapper, rnd, global_arrays, uniform))


def clamp_variances(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """BatchNorm running variances pushed below 0 by noise would give NaN scores; clamping is
    post-processing of the DP release, so the guarantee is unchanged."""
    out = dict(arrays)
    for key, arr in arrays.items():
        if key.endswith("running_var") and np.issubdtype(arr.dtype, np.floating):
            out[key] = np.maximum(arr, 0).astype(arr.dtype)
    return out
