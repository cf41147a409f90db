"""What the coordinator and the hospitals say to each other (record names, keys, encodings).

One message per round. Server -> site (TRAIN; EVALUATE only for the final model): RecordDict
{"arrays": packed weights (common/federation/wire.py: "floats", "ints", and "scales" for an int8
delta; absent when the site already holds the model), "wire": how they are packed, "config": the
RoundConfig}.
Site -> server: {"eval": MetricRecord (the received model scored on the validation split, when
asked), "metrics": MetricRecord (TRAIN), "arrays" + "wire" (TRAIN: the site's update as a
delta), "site": ConfigRecord {site, status, held = digest of the global model it now holds}}.
A site that cannot do the work replies with only {"site": {"site", "status": "error", "error"}}
so the coordinator can say *which* site failed; `error` is one of the fixed codes of SITE_ERRORS
(never a message, path or value: those stay in the site's own log). A site that lacks the model a
delta was made against answers status "need-full" and is sent the full model. A site that trains
but is too small to send a histogram says so in "site" (`eval-error` = "too-small-to-evaluate")
instead of an "eval" record. Nothing per-image ever goes into a reply.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
EVAL = "eval"
SITE = "site"
WIRE = "wire"
FLOATS = "floats"
INTS = "ints"
SCALES = "scales"  # int8 deltas only: one float32 scale per block

# Metric names every reply of a kind carries (identical keys across sites).
TRAIN_METRICS = ("num-examples", "train-loss", "train-seconds")
EVAL_METRICS = ("num-examples", "num-pos", "hist-neg", "hist-pos", "eval-seconds")

STATUS_OK = "ok"
STATUS_ERROR = "error"
STATUS_NEED_FULL = "need-full"

# train-layers -> state-dict key prefixes the sites fine-tune (common/training/loops.set_trainable's
# whole-image stages); frozen arrays never change, so they are neither sent back nor sent again.
TRAIN_LAYERS: dict[str, tuple[str, ...]] = {"all": ("",), "top": ("top.", "head."), "head": ("head.",)}


def exchanged_keys(keys: Iterable[str], bn_prefixes: Iterable[str], train_layers: str, fedbn: bool) -> list[str]:
    """The arrays a round can change: those of the trained layers, minus BatchNorm with FedBN."""
    prefixes = TRAIN_LAYERS[train_layers]
    bn = list(bn_prefixes)
    return sorted(k for k in keys
                  if k.startswith(prefixes) and not (fedbn and is_batchnorm_key(k, bn)))

# The only error codes a site sends, and what the coordinator prints for each.
SITE_ERRORS: dict[str, str] = {
    "bad-request": "the site could not use the coordinator's request",
    "over-limit:hist-bins": "more evaluation histogram bins than the site allows",
    "over-limit:image-size": "a larger model input than the site allows",
    "over-limit:local-epochs": "more local epochs than the site allows",
    "over-limit:max-steps": "more optimiser steps than the site allows",
    "site-name-mismatch": "the site's key is registered under another site name",
    "too-small-to-evaluate": "too small to evaluate: fewer validation patients per class than the site's minimum",
    "data-error": "the site's data could not be used (details in the site's client.log)",
    "internal-error": "the site failed (details in the site's client.log)",
}
TOO_SMALL = "too-small-to-evaluate"


def site_error_text(code: Any) -> str:
    """Coordinator-side wording of a site's error code; an unknown code is shown as sanitised text."""
    code = str(code)
    if code in SITE_ERRORS:
        return f"[{code}] {SITE_ERRORS[code]}"
    clean = "".join(c if c.isalnum() or c in ":-_." else "?" for c in code[:64])
    return f"[{clean}] (unknown error code)"


def is_batchnorm_key(key: str, bn_prefixes: Iterable[str]) -> bool:
    """True for a BN weight/bias/running stat (FedBN keeps these at the site)."""
    return any(key.startswith(p + ".") for p in bn_prefixes)


def batchnorm_prefixes(model: Any) -> list[str]:
    """Module names of every BatchNorm layer of a torch model."""
    import torch

    return [name for name, mod in model.named_modules() if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm)]


def c_contiguous(arr: Any) -> np.ndarray:
    """C-ordered array keeping 0-d shapes (np.ascontiguousarray would turn () into (1,))."""
    arr = np.asarray(arr)
    return arr if arr.flags.c_contiguous else np.array(arr, order="C")


def state_to_numpy(state: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """torch state dict -> contiguous numpy arrays (CPU)."""
    out: dict[str, np.ndarray] = {}
    for k, v in state.items():
        arr = v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v)
        out[k] = c_contiguous(arr)
    return out


def numpy_to_arrayrecord(arrays: Mapping[str, np.ndarray]) -> Any:
    from flwr.app import Array, ArrayRecord

    return ArrayRecord({k: Array(c_contiguous(v)) for k, v in arrays.items()})


def arrayrecord_to_numpy(record: Any) -> dict[str, np.ndarray]:
    return {k: arr.numpy() for k, arr in record.items()}


def arrays_sha256(arrays: Mapping[str, np.ndarray]) -> str:
    """Digest of weights in key order (name, dtype, shape, bytes): same weights -> same digest."""
    h = hashlib.sha256()
    for k in sorted(arrays):
        a = c_contiguous(arrays[k])
        h.update(k.encode())
        h.update(str(a.dtype).encode())
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def recorddict_nbytes(content: Any) -> int:
    """Bytes of a reply as Flower serialises it (all nested objects), or the array bytes as fallback."""
    from mammo_fl.common.federation.flower_private import serialized_size

    try:
        return serialized_size(content)
    except Exception:  # noqa: BLE001 - internal Flower API; fall back to a close estimate
        total = 0
        for rec in content.array_records.values():
            total += sum(len(a.data) for a in rec.values())
        return total


def packed_arrays(packed: Any) -> dict[str, np.ndarray]:
    """A wire.Packed's flat buffers by name (none for "same"; "scales" only for an int8 delta)."""
    if packed.mode == "same":
        return {}
    out = {FLOATS: packed.floats, INTS: packed.ints}
    if packed.dtype == "int8":
        out[SCALES] = packed.scales
    return out


def packed_to_records(packed: Any) -> tuple[Any, dict[str, Any]]:
    """A wire.Packed -> (ArrayRecord with the flat buffers or None, ConfigRecord values)."""
    from flwr.app import Array, ArrayRecord

    meta = {"mode": packed.mode, "dtype": packed.dtype, "layout": packed.layout,
            "exponents": [int(e) for e in packed.exponents]}
    if packed.mode == "same":
        return None, meta
    return ArrayRecord({k: Array(v) for k, v in packed_arrays(packed).items()}), meta


def packed_from_records(arrays: Any, meta: Mapping[str, Any]) -> Any:
    """Inverse of packed_to_records (a one-line WireError on anything malformed)."""
    from mammo_fl.common.federation import wire

    mode = str(meta.get("mode", ""))
    if mode not in (wire.FULL, wire.DELTA, wire.SAME):
        raise wire.WireError(f"unknown wire mode {mode!r}")
    dtype = str(meta.get("dtype", "fp32"))
    wire.check_wire_dtype(dtype)
    scales = np.zeros(0, np.float32)
    if mode == wire.SAME:
        floats, ints = np.zeros(0, np.float32), np.zeros(0, np.int64)
    else:
        needed = (FLOATS, INTS, SCALES) if dtype == "int8" else (FLOATS, INTS)
        if arrays is None or any(k not in arrays for k in needed):
            raise wire.WireError("packed arrays missing")
        floats, ints = arrays[FLOATS].numpy(), arrays[INTS].numpy()
        if dtype == "int8":
            scales = arrays[SCALES].numpy()
    if (floats.dtype != np.dtype(wire.WIRE_NUMPY[dtype]) or floats.ndim != 1 or ints.dtype != np.int64
            or ints.ndim != 1 or scales.dtype != np.float32 or scales.ndim != 1):
        raise wire.WireError(f"packed arrays have dtypes {floats.dtype}/{ints.dtype}/{scales.dtype}, "
                             f"expected {dtype}")
    exponents = [int(e) for e in (meta.get("exponents") or [])]
    return wire.Packed(mode, dtype, floats, ints, str(meta.get("layout", "")), exponents, scales)


def dumps(obj: Any) -> str:
    """JSON for dict-valued config entries (ConfigRecord holds only scalars and lists)."""
    return json.dumps(obj, sort_keys=True)


def loads(text: str) -> Any:
    return json.loads(text)
