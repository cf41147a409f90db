"""Plain-JSON copies of run records (metrics, baseline, mammo-sim's run.json)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from mammo_fl.common.utils.atomic import atomic_write_json


def jsonable(value: Any) -> Any:
    """Dicts/lists recursively; numpy scalars -> numbers, tuples -> lists, Paths -> str, NaN/Inf -> null
    (strict JSON: e.g. the AUC of a one-class split)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: Path, data: dict[str, Any], indent: int = 1) -> None:
    """A run's JSON record (metrics, baseline, comparison, mammo-sim's run.json): strict JSON, numpy
    scalars as numbers, written atomically so a reader never sees half a file."""
    atomic_write_json(path, jsonable(data), indent=indent)
