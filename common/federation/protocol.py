"""What the coordinator and the hospitals say to each other (record names, keys, encodings).

Server -> site (TRAIN / EVALUATE): RecordDict {"arrays": global weights, "config": ConfigRecord}.
Site -> server: {"arrays" (TRAIN only), "metrics": MetricRecord, "site": ConfigRecord}.
A site that cannot do the work replies with only {"site": {"site", "status": "error", "error"}}
so the coordinator can say *which* site failed; `error` is one of the fixed codes of SITE_ERRORS
(never a message, path or value: those stay in the site's own log). Nothing per-image ever goes
into a reply.
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
SITE = "site"

# Metric names every reply of a kind carries (identical keys across sites).
TRAIN_METRICS = ("num-examples", "train-loss", "train-seconds")
EVAL_METRICS = ("num-examples", "num-pos", "hist-neg", "hist-pos", "eval-seconds")

STATUS_OK = "ok"
STATUS_ERROR = "error"

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


def dumps(obj: Any) -> str:
    """JSON for dict-valued config entries (ConfigRecord holds only scalars and lists)."""
    return json.dumps(obj, sort_keys=True)


def loads(text: str) -> Any:
    return json.loads(text)
