"""All-convolutional whole-image classifiers: patch trunk + top blocks + GAP + dense(2).

Modules are named `trunk` (the truncated patch network), `top` (new blocks) and `head`
(pooling, dropout, dense) so the 2-stage schedule freezes `trunk` and trains `top` + `head`.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from mammo_fl.common.models.heatmap import HeatmapConvTop, HeatmapFCTop, HeatmapLayer
from mammo_fl.common.models.patch import PatchModel, _init_conv_bn, build_trunk
from mammo_fl.common.models.spec import normalize_whole_spec, trunk_channels, whole_spec_from_patch


class BottleneckUnit(nn.Module):
    """conv1x1(L)-BN-ReLU, conv3x3(M, stride)-BN-ReLU, conv1x1(N)-BN, + shortcut, ReLU."""

    def __init__(self, in_ch: int, l: int, m: int, n: int, stride: int) -> None:  # noqa: E741
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_ch, l, 1, bias=False), nn.BatchNorm2d(l), nn.ReLU(inplace=True),
            nn.Conv2d(l, m, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(m), nn.ReLU(inplace=True),
            nn.Conv2d(m, n, 1, bias=False), nn.BatchNorm2d(n),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != n:  # projection shortcut
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, n, 1, stride=stride, bias=False), nn.BatchNorm2d(n))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


class ResNetTop(nn.Module):
    """Blocks `[L-M-N]xK`; the first unit of each block has stride 2 and a projection shortcut."""

    def __init__(self, in_ch: int, blocks: list[list[int]]) -> None:
        super().__init__()
        stages = []
        for l, m, n, k in blocks:  # noqa: E741
            units = [BottleneckUnit(in_ch if i == 0 else n, l, m, n, 2 if i == 0 else 1) for i in range(k)]
            stages.append(nn.Sequential(*units))
            in_ch = n
        self.blocks = nn.Sequential(*stages)
        self.out_channels = in_ch
        _init_conv_bn(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


class VGGTop(nn.Module):
    """Blocks `CxK`: K x (conv3x3-BN-ReLU), then 2x2 max-pool (ceil mode: small maps stay >= 1 px)."""

    def __init__(self, in_ch: int, blocks: list[list[int]]) -> None:
        super().__init__()
        mods: list[nn.Module] = []
        for channels, k in blocks:
            for _ in range(k):
                mods += [nn.Conv2d(in_ch, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels),
                         nn.ReLU(inplace=True)]
                in_ch = channels
            mods.append(nn.MaxPool2d(2, 2, ceil_mode=True))
        self.blocks = nn.Sequential(*mods)
        self.out_channels = in_ch
        _init_conv_bn(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


class ClassifierHead(nn.Module):
    """[global average pooling] -> dropout -> dense(num_classes) (logits)."""

    def __init__(self, in_features: int, num_classes: int, dropout: float, spatial: bool) -> None:
        super().__init__()
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1)) if spatial else nn.Identity()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.pool(x)))


class WholeImageModel(nn.Module):
    def __init__(self, arch: str, trunk: nn.Module, top: nn.Module, head: nn.Module, spec: dict[str, Any]) -> None:
        super().__init__()
        self.arch = arch
        self.spec = spec
        self.trunk = trunk
        self.top = top
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.top(self.trunk(x)))


def _conv_top(top: dict[str, Any], in_ch: int) -> nn.Module:
    return ResNetTop(in_ch, top["blocks"]) if top["type"] == "resnet" else VGGTop(in_ch, top["blocks"])


def _heatmap_fc_flat_features(arch: str, top: dict[str, Any], input_size: list[int]) -> int:
    """Size of the flattened pooled heatmap for `input_size`, via a shape-only (meta device) pass."""
    with torch.device("meta"):
        trunk = build_trunk(arch)
        probe = HeatmapFCTop(HeatmapLayer(trunk_channels(arch), top["heatmap_classes"], top["avg_pool"],
                                          top["stride"]), top["pool"], 1, [], False, 0.0)
        x = torch.empty(1, 3, *input_size)
        return int(probe.pooled_heatmap(trunk(x)).flatten(1).shape[1])


def build_top(spec: dict[str, Any]) -> tuple[nn.Module, int, bool]:
    """(top module, features it outputs, whether the head must pool spatially)."""
    top, arch = spec["top"], spec["trunk"]
    in_ch = trunk_channels(arch)
    if top["type"] in ("resnet", "vgg"):
        module = _conv_top(top, in_ch)
        return module, module.out_channels, True
    heatmap = HeatmapLayer(in_ch, top["heatmap_classes"], top["avg_pool"], top["stride"])
    if top["type"] == "heatmap_conv":
        module = HeatmapConvTop(heatmap, _conv_top(top["inner"], top["heatmap_classes"]))
        return module, module.out_channels, True
    flat = _heatmap_fc_flat_features(arch, top, spec["input_size"])
    module = HeatmapFCTop(heatmap, top["pool"], flat, top["fc"], top["shortcut"], spec["dropout"])
    _init_conv_bn(module.fc)
    return module, module.out_features, False


def build_whole_model(spec: dict[str, Any]) -> WholeImageModel:
    """A whole-image model from its spec (random init; weights come from a checkpoint or conversion)."""
    spec = normalize_whole_spec(spec)
    top, features, spatial = build_top(spec)
    head = ClassifierHead(features, spec["num_classes"], spec["dropout"], spatial)
    return WholeImageModel(spec["trunk"], build_trunk(spec["trunk"]), top, head, spec)


def convert_patch_to_whole(patch_model: PatchModel, top_spec: dict[str, Any], *, num_classes: int = 2,
                           dropout: float = 0.0, input_size: list[int] | tuple[int, int] | None = None
                           ) -> WholeImageModel:
    """Whole-image model whose trunk is an exact copy of the patch model's trunk.

    For heatmap tops the 1x1-conv heatmap layer is initialised from the patch classifier's dense layer.
    """
    top_spec = copy.deepcopy(top_spec)
    if top_spec.get("type") in ("heatmap_conv", "heatmap_fc"):
        top_spec["heatmap_classes"] = patch_model.fc.out_features
    spec = whole_spec_from_patch({"arch": patch_model.arch, "num_classes": patch_model.fc.out_features},
                                 top_spec, num_classes=num_classes, dropout=dropout, input_size=input_size)
    model = build_whole_model(spec)
    model.trunk.load_state_dict(patch_model.trunk.state_dict(), strict=True)
    if isinstance(model.top, (HeatmapConvTop, HeatmapFCTop)):
        model.top.heatmap.init_from_dense(patch_model.fc)
    return model.to(next(patch_model.parameters()).device)
