"""Model builders. Every model is rebuilt from a plain-dict spec (see `common.models.spec`)."""

from __future__ import annotations

from typing import Any

from torch import nn

from mammo_fl.common.utils.errors import ConfigError
from mammo_fl.common.models.patch import PatchModel, build_patch_model, load_pretrained_trunk, stage2_modules
from mammo_fl.common.models.spec import PAPER_TOPS, normalize_patch_spec, normalize_whole_spec
from mammo_fl.common.models.whole import WholeImageModel, build_whole_model, convert_patch_to_whole

MODEL_KINDS = ("patch", "whole_image")


def build_model(kind: str, spec: dict[str, Any]) -> nn.Module:
    """`kind` is "patch" or "whole_image"; the model carries `.spec` (normalised) and `.arch`."""
    if kind == "patch":
        return build_patch_model(spec)
    if kind == "whole_image":
        return build_whole_model(spec)
    raise ConfigError(f"unknown model kind {kind!r}; known: {', '.join(MODEL_KINDS)}")


__all__ = [
    "MODEL_KINDS", "PAPER_TOPS", "PatchModel", "WholeImageModel", "build_model", "build_patch_model",
    "build_whole_model", "convert_patch_to_whole", "load_pretrained_trunk", "normalize_patch_spec",
    "normalize_whole_spec", "stage2_modules",
]
