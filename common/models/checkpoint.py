"""Self-describing checkpoints: one file rebuilds the exact model on any site.

A `torch.save`d dict of plain types + tensors (readable with `weights_only=True`):
format, kind, model_spec, preprocessing, class_names, state_dict, provenance, metrics,
and optionally `training_state` (optimizer / epoch counters for resuming).
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mammo_fl.common.utils.atomic import atomic_path
from mammo_fl.common.utils.errors import ConfigError, DataError
from mammo_fl.common.models import MODEL_KINDS, build_model

FORMAT = "mammo-fl/v1"
WHOLE_IMAGE_CLASSES = ["not_malignant", "malignant"]
PATCH_CLASSES = ["background", "calc_benign", "calc_malignant", "mass_benign", "mass_malignant"]
REQUIRED_PREPROCESSING = ("height", "width", "mode", "mean")


@dataclass
class LoadedCheckpoint:
    model: nn.Module
    kind: str
    model_spec: dict[str, Any]
    preprocessing: dict[str, Any]
    class_names: list[str]
    provenance: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    training_state: dict[str, Any] | None = None


def _plain(value: Any, what: str) -> Any:
    """JSON round-trip: checkpoint metadata must be plain types (weights_only loading, portability)."""
    try:
        return json.loads(json.dumps(value, default=_json_default))
    except (TypeError, ValueError) as exc:
        raise DataError(None, f"checkpoint {what} is not JSON-able: {exc}") from None


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON-able")


def default_provenance() -> dict[str, Any]:
    return {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "torch": torch.__version__,
            "python": platform.python_version(), "host": platform.node()}


def save_checkpoint(path: str | Path, model: nn.Module, *, kind: str, model_spec: dict[str, Any],
                    preprocessing: dict[str, Any], class_names: list[str], provenance: dict[str, Any] | None = None,
                    metrics: dict[str, Any] | None = None, training_state: dict[str, Any] | None = None) -> None:
    """Write atomically (tmp file + rename) so a crash never leaves a half-written checkpoint."""
    if kind not in MODEL_KINDS:
        raise DataError(path, f"unknown checkpoint kind {kind!r}")
    missing = [k for k in REQUIRED_PREPROCESSING if k not in preprocessing]
    if missing:
        raise DataError(path, f"preprocessing lacks {', '.join(missing)}")
    payload = {
        "format": FORMAT,
        "kind": kind,
        "model_spec": _plain(model_spec, "model_spec"),
        "preprocessing": _plain(preprocessing, "preprocessing"),
        "class_names": [str(c) for c in class_names],
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "provenance": _plain({**default_provenance(), **(provenance or {})}, "provenance"),
        "metrics": _plain(metrics or {}, "metrics"),
    }
    if training_state is not None:
        payload["training_state"] = training_state
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def _read(path: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "checkpoint not found")
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - corrupt/truncated/foreign pickles all mean "bad file"
        raise DataError(path, f"not a readable checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        got = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise DataError(path, f"not a {FORMAT} checkpoint (format {got!r})")
    for key in ("kind", "model_spec", "preprocessing", "class_names", "state_dict"):
        if key not in payload:
            raise DataError(path, f"checkpoint lacks {key!r}")
    return payload


def update_checkpoint_metrics(path: str | Path, metrics: dict[str, Any], copy_to: str | Path | None = None) -> None:
    """Replace the metrics a checkpoint carries, weights and everything else unchanged (atomically);
    with `copy_to`, that file gets the same bytes too. Federated rounds learn a model's validation
    figures one round after its checkpoint was written."""
    payload = _read(path)
    payload["metrics"] = _plain(metrics, "metrics")
    for dest in (path, copy_to) if copy_to is not None else (path,):
        with atomic_path(dest) as tmp:
            torch.save(payload, tmp)


def read_checkpoint_meta(path: str | Path) -> dict[str, Any]:
    """Everything but the weights (and the training state)."""
    payload = _read(path)
    return {k: v for k, v in payload.items() if k not in ("state_dict", "training_state")}


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> LoadedCheckpoint:
    """Rebuild the exact model from the spec and load its weights (strict)."""
    payload = _read(path, "cpu")
    try:
        model = build_model(payload["kind"], payload["model_spec"])
    except ConfigError as exc:
        raise DataError(path, f"bad model_spec: {exc}") from None
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise DataError(path, f"weights do not match the model_spec: {' '.join(first[:3])[:300]}") from None
    model.to(device).eval()
    return LoadedCheckpoint(model=model, kind=payload["kind"], model_spec=payload["model_spec"],
                            preprocessing=payload["preprocessing"], class_names=list(payload["class_names"]),
                            provenance=payload.get("provenance", {}), metrics=payload.get("metrics", {}),
                            training_state=payload.get("training_state"))
