"""Differential privacy at the site: clip the update, noise it (dp.noise-at = site), noise the histograms.

Our own code rather than Flower's `fixedclipping_mod` / `LocalDpMod` (flwr/clientapp/mod/), because
those mods (1) return an error unless the reply's weight keys equal the received ones in order,
which FedBN (and sending only trainable layers) breaks; (2) clip with `array *= factor` on the
result of `np.subtract`, which for a 0-d weight is a numpy scalar that `*=` rebinds instead of
scaling: the weight counts in the norm but leaves unclipped (checked on flwr 1.42), and LocalDpMod
adds truncated integer noise to integer buffers such as BatchNorm's `num_batches_tracked`; (3) run
after our handler, so the audit log would record weights other than those that left the site.
Here only float weights are clipped/noised, in float64, before the update is packed for the wire
(common/federation/wire.py) and the reply is built and logged. Clipping is checked on what the
coordinator will reconstruct from the packed arrays (fp16/bf16 rounding can lengthen a clipped
update by up to 2^-8 of its norm, int8 rounding nearly always lengthens it a little), so an honest
site is never above the clip norm there.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from mammo_fl.common.federation import wire as W
from mammo_fl.common.federation.round_config import RoundConfig

WIRE_CLIP_TRIES = 8  # each try shrinks by the measured excess plus a margin that doubles; 1-2 tries in practice


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


def wire_norm(packed: W.Packed, layout: W.Layout, held: Mapping[str, np.ndarray]) -> float:
    """||reconstructed - held|| over the float arrays, exactly as the coordinator decodes `packed`."""
    rebuilt = W.unpack(packed, layout, held)
    total = 0.0
    for k in layout.float_keys:
        diff = np.subtract(rebuilt[k].ravel(), np.asarray(held[k]).ravel(), dtype=np.float64)
        total += float(np.dot(diff, diff))
    return math.sqrt(total)


def pack_within_norm(sent: Mapping[str, np.ndarray], held: Mapping[str, np.ndarray], layout: W.Layout,
                     dtype: str, clip_norm: float) -> W.Packed:
    """`sent - held` packed in `dtype`; with `clip_norm` > 0, shrunk until its decoded norm is <= clip_norm."""
    packed = W.pack_delta(sent, held, layout, dtype)
    if clip_norm <= 0:
        return packed
    margin = 2.0 ** -12
    for _ in range(WIRE_CLIP_TRIES):
        norm = wire_norm(packed, layout, held)
        if norm <= clip_norm:
            return packed
        factor = clip_norm / norm * (1.0 - margin)
        sent = {k: _toward(sent[k], held[k], factor) if k in layout.float_keys else sent[k] for k in layout.keys}
        packed = W.pack_delta(sent, held, layout, dtype)
        margin *= 2.0
    return packed


def _toward(arr: np.ndarray, base: np.ndarray, factor: float) -> np.ndarray:
    glob = np.asarray(base, dtype=np.float64)
    return (glob + factor * (np.asarray(arr, dtype=np.float64) - glob)).astype(np.asarray(arr).dtype)


def wire_clip_norm(rc: RoundConfig) -> float:
    """The norm the packed update must respect: the clip norm when the site only clips; with site noise
    the bound holds before the noise (the noised update is far above it, by design)."""
    return rc.dp_clip_norm if rc.dp_clip_norm > 0 and rc.dp_site_noise <= 0 else 0.0
