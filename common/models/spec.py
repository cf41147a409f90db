"""Model specs: plain JSON-able dicts stored in checkpoints so any site rebuilds the exact model.

Patch spec::

    {"arch": "resnet50" | "resnet18" | "resnet34" | "vgg16" | "resnet_tiny" | "resnet_tiny16" | "resnet_small" | "vgg_tiny",
     "num_classes": 5, "dropout": 0.0}

Whole-image spec::

    {"trunk": <patch arch>, "top": <top spec>, "num_classes": 2, "dropout": 0.0,
     "input_size": [H, W]  # only required by the heatmap_fc top (it flattens a fixed-size map)}

Top specs:
- ``{"type": "resnet", "blocks": [[L, M, N, K], ...]}``: ResNet bottleneck blocks ``[L-M-N]xK``.
- ``{"type": "vgg", "blocks": [[C, K], ...]}``: VGG blocks ``CxK`` (conv3x3-BN-ReLU xK, max-pool 2).
- ``{"type": "heatmap_conv", "avg_pool": 7, "stride": 1, "heatmap_classes": 5, "inner": <resnet|vgg top>}``.
- ``{"type": "heatmap_fc", "avg_pool": 7, "stride": 1, "heatmap_classes": 5, "pool": 5, "fc": [64, 32],
  "shortcut": true}``.
"""

from __future__ import annotations

import copy
from typing import Any

from mammo_fl.common.utils.errors import ConfigError

# arch -> (channels of the truncated trunk output, family)
TRUNK_ARCHS: dict[str, tuple[int, str]] = {
    "resnet50": (2048, "resnet"),
    "resnet34": (512, "resnet"),
    "resnet18": (512, "resnet"),
    "resnet_small": (256, "resnet"),  # BasicBlock [2,2,2,2], widths 32-64-128-256
    "resnet_tiny": (128, "resnet"),  # BasicBlock [1,1,1,1], widths 16-32-64-128
    "resnet_tiny16": (128, "resnet"),  # resnet_tiny with a stride-1 layer4: output stride 16
    "vgg16": (512, "vgg"),
    "vgg_tiny": (128, "vgg"),  # 5 VGG blocks with BN, widths 16-32-64-128-128
}
TOP_TYPES = ("resnet", "vgg", "heatmap_conv", "heatmap_fc")

# The paper's whole-image tops (Shen et al. 2019, Methods: whole-image classifier top layers), handy for presets and tests.
PAPER_TOPS: dict[str, dict[str, Any]] = {
    "resnet_512x2": {"type": "resnet", "blocks": [[512, 512, 1024, 2], [512, 512, 1024, 2]]},
    "resnet_2048x1": {"type": "resnet", "blocks": [[512, 512, 2048, 1], [512, 512, 2048, 1]]},
    "vgg_256_128": {"type": "vgg", "blocks": [[256, 1], [128, 1]]},
    "vgg_512x1": {"type": "vgg", "blocks": [[512, 1], [512, 1]]},
    "heatmap_resnet": {
        "type": "heatmap_conv",
        "avg_pool": 7,
        "stride": 1,
        "heatmap_classes": 5,
        "inner": {"type": "resnet", "blocks": [[64, 64, 256, 2], [128, 128, 512, 2]]},
    },
    "heatmap_fc": {
        "type": "heatmap_fc", "avg_pool": 7, "stride": 1, "heatmap_classes": 5,
        "pool": 5, "fc": [64, 32], "shortcut": True,
    },
}


def trunk_channels(arch: str) -> int:
    check_arch(arch)
    return TRUNK_ARCHS[arch][0]


def trunk_stride(arch: str) -> int:
    """Output stride of the truncated trunk (input pixels per output cell)."""
    check_arch(arch)
    return 16 if arch == "resnet_tiny16" else 32


def trunk_family(arch: str) -> str:
    check_arch(arch)
    return TRUNK_ARCHS[arch][1]


def check_arch(arch: Any) -> str:
    if arch not in TRUNK_ARCHS:
        raise ConfigError(f"unknown model arch {arch!r}; known: {', '.join(TRUNK_ARCHS)}")
    return arch


def _int_list(value: Any, what: str, length: int | None = None) -> list[int]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) and v > 0 for v in value):
        raise ConfigError(f"{what} must be a list of positive integers, got {value!r}")
    if length is not None and len(value) != length:
        raise ConfigError(f"{what} must have {length} entries, got {value!r}")
    return [int(v) for v in value]


def _positive_int(spec: dict[str, Any], key: str, default: int) -> int:
    value = spec.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"model spec {key!r} must be a positive integer, got {value!r}")
    return value


def _dropout(spec: dict[str, Any]) -> float:
    value = spec.get("dropout", 0.0)
    if not isinstance(value, (int, float)) or not 0.0 <= float(value) < 1.0:
        raise ConfigError(f"model spec 'dropout' must be in [0, 1), got {value!r}")
    return float(value)


def normalize_patch_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """Validate a patch spec and fill defaults (returns a new dict)."""
    if not isinstance(spec, dict):
        raise ConfigError(f"patch model spec must be a table/dict, got {type(spec).__name__}")
    return {
        "arch": check_arch(spec.get("arch")),
        "num_classes": _positive_int(spec, "num_classes", 5),
        "dropout": _dropout(spec),
    }


def normalize_top_spec(top: dict[str, Any], nested: bool = False) -> dict[str, Any]:
    """Validate a top spec and fill defaults (returns a new dict)."""
    if not isinstance(top, dict) or top.get("type") not in TOP_TYPES:
        got = top.get("type") if isinstance(top, dict) else top
        raise ConfigError(f"top spec type must be one of {', '.join(TOP_TYPES)}, got {got!r}")
    kind = top["type"]
    if kind == "resnet":
        blocks = top.get("blocks")
        if not isinstance(blocks, list) or not blocks:
            raise ConfigError(f"resnet top needs blocks [[L, M, N, K], ...], got {blocks!r}")
        return {"type": kind, "blocks": [_int_list(b, "resnet top block [L, M, N, K]", 4) for b in blocks]}
    if kind == "vgg":
        blocks = top.get("blocks")
        if not isinstance(blocks, list) or not blocks:
            raise ConfigError(f"vgg top needs blocks [[C, K], ...], got {blocks!r}")
        return {"type": kind, "blocks": [_int_list(b, "vgg top block [C, K]", 2) for b in blocks]}
    if nested:
        raise ConfigError("a heatmap top cannot be nested inside another heatmap top")
    out: dict[str, Any] = {
        "type": kind,
        "avg_pool": _positive_int(top, "avg_pool", 7),
        "stride": _positive_int(top, "stride", 1),
        "heatmap_classes": _positive_int(top, "heatmap_classes", 5),
    }
    if kind == "heatmap_conv":
        out["inner"] = normalize_top_spec(top.get("inner", PAPER_TOPS["heatmap_resnet"]["inner"]), nested=True)
    else:
        out["pool"] = _positive_int(top, "pool", 5)
        out["fc"] = _int_list(top.get("fc", [64, 32]), "heatmap_fc 'fc'")
        out["shortcut"] = bool(top.get("shortcut", True))
    return out


def normalize_whole_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """Validate a whole-image spec and fill defaults (returns a new dict)."""
    if not isinstance(spec, dict):
        raise ConfigError(f"whole-image model spec must be a table/dict, got {type(spec).__name__}")
    out: dict[str, Any] = {
        "trunk": check_arch(spec.get("trunk")),
        "top": normalize_top_spec(spec.get("top")),
        "num_classes": _positive_int(spec, "num_classes", 2),
        "dropout": _dropout(spec),
    }
    if spec.get("input_size") is not None:
        out["input_size"] = _int_list(spec["input_size"], "input_size [H, W]", 2)
    if out["top"]["type"] == "heatmap_fc" and "input_size" not in out:
        raise ConfigError("a heatmap_fc top flattens a fixed-size map: the spec needs input_size [H, W]")
    return out


def whole_spec_from_patch(patch_spec: dict[str, Any], top: dict[str, Any], *, num_classes: int = 2,
                          dropout: float = 0.0, input_size: list[int] | tuple[int, int] | None = None
                          ) -> dict[str, Any]:
    """The whole-image spec for converting a patch model with `patch_spec`."""
    spec: dict[str, Any] = {"trunk": normalize_patch_spec(patch_spec)["arch"], "top": copy.deepcopy(top),
                            "num_classes": num_classes, "dropout": dropout}
    if input_size is not None:
        spec["input_size"] = list(input_size)
    return normalize_whole_spec(spec)
