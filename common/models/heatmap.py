"""The paper's heatmap whole-image designs (ablation only; they scored below the all-conv nets).

The heatmap layer applies the patch classifier at every position of the trunk's feature map:
average pooling (7x7 = one 224-px patch at stride 32) followed by a 1x1 convolution initialised
from the patch classifier's dense layer, with ReLU instead of softmax (keeps gradients alive).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class HeatmapLayer(nn.Module):
    """avg-pool(k, stride) -> 1x1 conv (heatmap classes) -> ReLU."""

    def __init__(self, in_channels: int, classes: int, avg_pool: int, stride: int) -> None:
        super().__init__()
        self.avg_pool = avg_pool
        self.stride = stride
        self.conv = nn.Conv2d(in_channels, classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Clamp the window to the map so small presets (tiny images) still work.
        k = (min(self.avg_pool, x.shape[-2]), min(self.avg_pool, x.shape[-1]))
        return F.relu(self.conv(F.avg_pool2d(x, k, stride=self.stride)))

    @torch.no_grad()
    def init_from_dense(self, fc: nn.Linear) -> None:
        """Copy the patch classifier's dense layer (weights [classes, C]) into the 1x1 conv."""
        self.conv.weight.copy_(fc.weight[:, :, None, None])
        self.conv.bias.copy_(fc.bias)


class HeatmapConvTop(nn.Module):
    """heatmap -> conv top blocks (ResNet or VGG style) on the heatmap channels."""

    def __init__(self, heatmap: HeatmapLayer, inner: nn.Module) -> None:
        super().__init__()
        self.heatmap = heatmap
        self.inner = inner
        self.out_channels: int = inner.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(self.heatmap(x))


class _MaxPoolClamped(nn.Module):
    def __init__(self, pool: int) -> None:
        super().__init__()
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = (min(self.pool, x.shape[-2]), min(self.pool, x.shape[-1]))
        return F.max_pool2d(x, k, stride=k)  # floor mode, as Keras MaxPooling2D


class HeatmapFCTop(nn.Module):
    """heatmap -> max-pool -> flatten -> FC stack (Linear-BN-ReLU-dropout) [+ flattened heatmap shortcut].

    Returns the features the head's dense layer reads: the FC output, concatenated with the
    flattened heatmap when `shortcut` is on (a dense layer on the concatenation equals the sum of the
    main dense layer and a shortcut dense layer from the heatmap, as in the paper's design).
    """

    def __init__(self, heatmap: HeatmapLayer, pool: int, flat_features: int, fc: list[int],
                 shortcut: bool, dropout: float) -> None:
        super().__init__()
        self.heatmap = heatmap
        self.pool = _MaxPoolClamped(pool)
        layers: list[nn.Module] = []
        width = flat_features
        for units in fc:
            layers += [nn.Linear(width, units), nn.BatchNorm1d(units), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            width = units
        self.fc = nn.Sequential(*layers)
        self.shortcut = shortcut
        self.flat_features = flat_features
        self.out_features: int = width + (flat_features if shortcut else 0)

    def pooled_heatmap(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.heatmap(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = torch.flatten(self.pooled_heatmap(x), 1)
        if flat.shape[1] != self.flat_features:
            raise ValueError(f"heatmap_fc top built for {self.flat_features} heatmap values, got {flat.shape[1]}: "
                             "the input size differs from the model spec's input_size")
        out = self.fc(flat)
        return torch.cat([out, flat], dim=1) if self.shortcut else out
