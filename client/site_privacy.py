"""Differential privacy at the site: clip the update, noise it (dp.noise-at = site), noise the histograms.

Our own code rather than Flower's `fixedclipping_mod` / `LocalDpMod` (flwr/clientapp/mod/), because
those mods (1) return an error unless the reply's weight keys equal the received ones in order,
which FedBN (and sending only trainable layers) breaks; (2) clip with `array *= factor` on the
result of `np.subtract`, which for a 0-d weight is a numpy scalar that `*=` rebinds instead of
scaling: the weight counts in the norm but leaves unclipped (checked on flwr 1.42), and LocalDpMod
adds truncated integer noise to integer buffers such as BatchNorm's `num_batches_tracked`; (3) run
after our handler, so the audit log would record weights other than those that left the site.
Here only float weights are clipped/noised, in float64, before the reply is built and logged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from mammo_fl.common.federation.round_config import RoundConfig


def _floats(arrays: Mapping[str, np.ndarray]) -> list[str]:
    return [k for k, v in arrays.items() if np.issubdtype(v.dtype, np.floating)]


def clip_update(sent: dict[str, np.ndarray], received: Mapping[str, np.ndarray],
                clip_norm: float) -> dict[str, np.ndarray]:
    """w_global + min(1, C / ||w - w_global||) x (w - w_global), over all float weights sent."""
    keys = _floats(sent)
    total = 0.0
    for k in keys:  # one float64 array at a time (a ResNet50 update in float64 is 200 MB)
        diff = np.subtract(sent[k].ravel(), np.asarray(received[k]).ravel(), dtype=np.float64)
        total += float(np.dot(diff, diff))
    norm = math.sqrt(total)
    if norm <= clip_norm:
        return dict(sent)
    factor = clip_norm / norm
    out = dict(sent)
    for k in keys:
        glob = np.asarray(received[k], dtype=np.float64)
        out[k] = (glob + factor * (sent[k] - glob)).astype(sent[k].dtype)
    return out


def noise_update(sent: dict[str, np.ndarray], std: float, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Gaussian noise of `std` on every float weight (= on the update, since w_global is public)."""
    out = dict(sent)
    for k in _floats(sent):
        out[k] = (sent[k].astype(np.float64) + rng.normal(0.0, std, sent[k].shape)).astype(sent[k].dtype)
    return out


def protect_update(sent: dict[str, np.ndarray], received: Mapping[str, np.ndarray],
                   rc: RoundConfig) -> dict[str, np.ndarray]:
    """What the coordinator asked for: clip to dp-clip-norm, then (noise at the site) add noise."""
    if rc.dp_clip_norm <= 0:
        return sent
    out = clip_update(sent, received, rc.dp_clip_norm)
    if rc.dp_site_noise > 0:
        out = noise_update(out, rc.dp_site_noise * rc.dp_clip_norm, np.random.default_rng())  # OS entropy
    return out


def noise_histograms(neg: np.ndarray, pos: np.ndarray, std: float,
                     rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian noise on every bin, rounded and clamped at 0 (post-processing): counts stay counts."""
    if std <= 0:
        return neg, pos
    rng = rng or np.random.default_rng()
    noisy = [np.maximum(np.rint(h + rng.normal(0.0, std, h.shape)), 0).astype(np.int64) for h in (neg, pos)]
    return noisy[0], noisy[1]
