"""5-class patch classifiers: a convolutional trunk + global average pooling + one dense layer.

Trunks are torchvision ResNet / VGG16 truncated as in Shen et al. 2019, Methods: network design (ResNet: conv1..layer4;
VGG16: `features` through the last max-pool), plus small CPU-sized backbones. Modules are named
`trunk`, `pool`, `dropout`, `fc` so freezing by stage is a matter of picking submodules.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models import resnet18, resnet34, resnet50
from torchvision.models.resnet import BasicBlock
from torchvision.models.vgg import cfgs as vgg_cfgs
from torchvision.models.vgg import make_layers

from mammo_fl.common.utils.errors import DataError
from mammo_fl.common.models.spec import normalize_patch_spec, trunk_channels, trunk_family

RESNET_STEM = ("conv1", "bn1", "relu", "maxpool")
RESNET_LAYERS = ("layer1", "layer2", "layer3", "layer4")


def _resnet_trunk_from_torchvision(net: nn.Module) -> nn.Sequential:
    """conv1 .. layer4 under the same names as torchvision (so its state_dict keys map 1:1)."""
    return nn.Sequential(OrderedDict((name, getattr(net, name)) for name in RESNET_STEM + RESNET_LAYERS))


def _init_conv_bn(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def small_resnet_trunk(widths: tuple[int, int, int, int], blocks: tuple[int, int, int, int],
                       last_stride: int = 2) -> nn.Sequential:
    """A ResNet of BasicBlocks with the torchvision layout (same module names); output stride 32, or
    16 with `last_stride=1` (layer4 keeps layer3's resolution: finer maps for small CPU-sized images)."""
    layers: OrderedDict[str, nn.Module] = OrderedDict(
        conv1=nn.Conv2d(3, widths[0], kernel_size=7, stride=2, padding=3, bias=False),
        bn1=nn.BatchNorm2d(widths[0]),
        relu=nn.ReLU(inplace=True),
        maxpool=nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
    )
    in_ch = widths[0]
    for i, (width, count) in enumerate(zip(widths, blocks, strict=True)):
        stride = 1 if i == 0 else (last_stride if i == 3 else 2)
        units: list[nn.Module] = []
        for j in range(count):
            down = None
            if j == 0 and (stride != 1 or in_ch != width):
                down = nn.Sequential(nn.Conv2d(in_ch, width, 1, stride=stride, bias=False), nn.BatchNorm2d(width))
            units.append(BasicBlock(in_ch, width, stride=stride if j == 0 else 1, downsample=down))
            in_ch = width
        layers[f"layer{i + 1}"] = nn.Sequential(*units)
    trunk = nn.Sequential(layers)
    _init_conv_bn(trunk)
    return trunk


def vgg_tiny_trunk(widths: tuple[int, ...] = (16, 32, 64, 128, 128)) -> nn.Sequential:
    """Five VGG blocks (conv3x3-BN-ReLU, max-pool 2): stride 32 like VGG16, BN so it trains from scratch."""
    mods: list[nn.Module] = []
    in_ch = 3
    for width in widths:
        mods += [nn.Conv2d(in_ch, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                 nn.MaxPool2d(2, 2)]
        in_ch = width
    trunk = nn.Sequential(*mods)
    _init_conv_bn(trunk)
    return trunk


def vgg16_features() -> nn.Sequential:
    """torchvision VGG16 `features` (indices 0..30, 30 = block5_pool) without building its 120M-weight
    classifier (which the paper drops anyway)."""
    trunk = make_layers(vgg_cfgs["D"], batch_norm=False)
    _init_conv_bn(trunk)
    return trunk


def build_trunk(arch: str) -> nn.Sequential:
    """A randomly initialised, truncated trunk (output stride 32, 16 for resnet_tiny16; `trunk_channels(arch)` channels)."""
    if arch == "resnet50":
        return _resnet_trunk_from_torchvision(resnet50(weights=None))
    if arch == "resnet34":
        return _resnet_trunk_from_torchvision(resnet34(weights=None))
    if arch == "resnet18":
        return _resnet_trunk_from_torchvision(resnet18(weights=None))
    if arch == "resnet_small":
        return small_resnet_trunk((32, 64, 128, 256), (2, 2, 2, 2))
    if arch == "resnet_tiny":
        return small_resnet_trunk((16, 32, 64, 128), (1, 1, 1, 1))
    if arch == "resnet_tiny16":
        return small_resnet_trunk((16, 32, 64, 128), (1, 1, 1, 1), last_stride=1)
    if arch == "vgg16":
        return vgg16_features()
    if arch == "vgg_tiny":
        return vgg_tiny_trunk()
    raise AssertionError(arch)  # normalize_patch_spec already rejected unknown archs


class PatchModel(nn.Module):
    """trunk -> global average pooling -> dropout -> dense(num_classes) (logits)."""

    def __init__(self, arch: str, num_classes: int = 5, dropout: float = 0.0) -> None:
        super().__init__()
        self.arch = arch
        self.spec = {"arch": arch, "num_classes": num_classes, "dropout": float(dropout)}
        self.trunk = build_trunk(arch)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(trunk_channels(arch), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.pool(self.trunk(x))))


def build_patch_model(spec: dict[str, Any]) -> PatchModel:
    spec = normalize_patch_spec(spec)
    return PatchModel(spec["arch"], spec["num_classes"], spec["dropout"])


def stage2_trunk_modules(trunk: nn.Module, arch: str) -> list[nn.Module]:
    """The trunk part of the paper's stage-2 "top layers" (Shen et al. 2019, Methods: training of the patch classifier).

    ResNet50 "top 46 layers" = `layer3[5]` + `layer4`; VGG16 "top 11" = `features[17:]` (conv4_1 on).
    Small nets get the analogous share: the last unit of layer3 + layer4 (ResNet18/34/small), layer4
    (resnet_tiny/resnet_tiny16: one unit per layer), the last two VGG blocks (vgg_tiny).
    """
    if arch in ("resnet50", "resnet34", "resnet18", "resnet_small"):
        return [trunk.layer3[-1], trunk.layer4]
    if arch in ("resnet_tiny", "resnet_tiny16"):
        return [trunk.layer4]
    if arch == "vgg16":
        return [trunk[i] for i in range(17, len(trunk))]
    if arch == "vgg_tiny":
        return [trunk[i] for i in range(12, len(trunk))]
    raise AssertionError(arch)


def stage2_modules(model: PatchModel) -> list[nn.Module]:
    """Modules trained in patch stage 2: the trunk's top layers plus the new head."""
    return stage2_trunk_modules(model.trunk, model.arch) + [model.fc]


def _torchvision_key_to_trunk(key: str, family: str) -> str | None:
    """Map a torchvision classifier key to our trunk key; None for the classifier (ignored)."""
    if family == "resnet":
        return None if key.startswith("fc.") else key
    if key.startswith("features."):
        return key[len("features."):]
    return None  # VGG "classifier.*" (the FC layers the paper drops)


def load_pretrained_trunk(model: nn.Module, path: str | Path) -> None:
    """Load a local torchvision ImageNet state_dict file into `model.trunk` (patch or whole model).

    The classifier keys (ResNet `fc.*`, VGG `classifier.*`) are ignored; any other mismatch is an error.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "pretrained weights file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file for the user
        raise DataError(path, f"not a readable torch state_dict ({type(exc).__name__}: {exc})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DataError(path, "expected a torchvision state_dict (a dict of tensors)")
    arch = getattr(model, "arch", None)
    family = trunk_family(arch)
    mapped = {}
    for key, value in state.items():
        key = key.removeprefix("module.")  # saved from DataParallel
        new = _torchvision_key_to_trunk(key, family)
        if new is not None:
            mapped[new] = value
    own = model.trunk.state_dict()
    missing = [k for k in own if k not in mapped]
    unexpected = [k for k in mapped if k not in own]
    wrong = [k for k in own if k in mapped and mapped[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        detail = []
        if missing:
            detail.append(f"{len(missing)} trunk tensors missing (e.g. {missing[0]})")
        if unexpected:
            detail.append(f"{len(unexpected)} unexpected tensors (e.g. {unexpected[0]})")
        if wrong:
            k = wrong[0]
            detail.append(f"{len(wrong)} shape mismatches (e.g. {k}: file {tuple(mapped[k].shape)} "
                          f"vs model {tuple(own[k].shape)})")
        raise DataError(path, f"does not match a torchvision {arch} trunk: {'; '.join(detail)}")
    model.trunk.load_state_dict(mapped, strict=True)
