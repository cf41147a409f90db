"""Where the cells of a convolutional feature map sit on the input image.

A heatmap cell is only useful to a reader if it is drawn over the pixels it describes. For a
stack of convolutions and poolings, output cell ``j`` is centred on input pixel ``scale * j + offset``
(pixel ``i`` centred at coordinate ``i``). The offset depends on the architecture: 0 for the ResNets
here ("same"-padded convolutions), ``(scale - 1) / 2`` for VGG's 2x2 max-pools. A wrong offset shifts
every heatmap by up to half a cell (32 px at stride 64), so it is measured, not assumed:
`probe_cell_grid` runs a one-channel copy of the network in which every convolution is a uniform
average, on a constant image and on row / column ramps; an interior cell's ramp output divided by its
constant output is the centroid of its (symmetric) receptive field, i.e. its centre.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage
from torch import nn

PROBE_SIZES = (256, 512, 1024, 2048, 4096)  # grow until the centre estimate stops changing


@dataclass(frozen=True)
class CellGrid:
    """Cell (i, j) is centred on model pixel (scale[0] * i + offset[0], scale[1] * j + offset[1])."""

    scale: tuple[float, float]
    offset: tuple[float, float]

    def pooled(self, window: tuple[int, int]) -> CellGrid:
        """The grid after a stride-1, unpadded average pool of `window` cells (a patch's footprint)."""
        return CellGrid(self.scale, tuple(o + s * (k - 1) / 2.0 for o, s, k in
                                          zip(self.offset, self.scale, window)))  # type: ignore[arg-type]

    def to_pixels(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return (np.asarray(rows) * self.scale[0] + self.offset[0],
                np.asarray(cols) * self.scale[1] + self.offset[1])

    def to_cells(self, ys: np.ndarray, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return ((np.asarray(ys) - self.offset[0]) / self.scale[0],
                (np.asarray(xs) - self.offset[1]) / self.scale[1])


def sample_cells(cell_map: np.ndarray, grid: CellGrid, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Bilinear value of a (h, w) cell map at model-pixel coordinates (edges held constant)."""
    rows, cols = grid.to_cells(ys, xs)
    return ndimage.map_coordinates(np.asarray(cell_map, dtype=np.float64), [rows, cols], order=1, mode="nearest")


def cells_to_pixels(cell_map: np.ndarray, grid: CellGrid, shape: tuple[int, int]) -> np.ndarray:
    """The cell map resampled onto every pixel of a (height, width) model image."""
    ys, xs = np.meshgrid(np.arange(shape[0], dtype=np.float64), np.arange(shape[1], dtype=np.float64),
                         indexing="ij")
    return sample_cells(cell_map, grid, ys, xs).astype(np.float32)


def _uniform_copy(module: nn.Module) -> nn.Module:
    """A one-channel copy whose convolutions average uniformly and whose max-pools average."""
    probe = nn.Sequential(copy.deepcopy(module)).cpu().eval()  # wrapped: a bare Conv2d is replaced too
    for parent in list(probe.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Conv2d):
                conv = nn.Conv2d(1, 1, child.kernel_size, child.stride, child.padding, child.dilation, bias=False)
                nn.init.constant_(conv.weight, 1.0 / float(np.prod(child.kernel_size)))
                setattr(parent, name, conv)
            elif isinstance(child, nn.MaxPool2d):
                setattr(parent, name, nn.AvgPool2d(child.kernel_size, child.stride, child.padding,
                                                   ceil_mode=child.ceil_mode, count_include_pad=True))
            elif isinstance(child, (nn.BatchNorm2d, nn.Dropout, nn.Dropout2d)):
                setattr(parent, name, nn.Identity())
    return probe.float()


def _centres(probe: nn.Module, size: int) -> tuple[tuple[float, float], tuple[float, float]] | None:
    """(scale, offset) per axis from two interior cells of a size x size probe image, or None if too small."""
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    batch = torch.stack([torch.ones_like(ys), ys, xs])[:, None]
    with torch.no_grad():
        out = probe(batch)[:, 0]
    h, w = out.shape[-2:]
    if min(h, w) < 4:
        return None
    i, j = h // 2, w // 2
    cy = (out[1, i - 1: i + 1, j] / out[0, i - 1: i + 1, j]).tolist()
    cx = (out[2, i, j - 1: j + 1] / out[0, i, j - 1: j + 1]).tolist()
    scale = (cy[1] - cy[0], cx[1] - cx[0])
    return scale, (cy[0] - scale[0] * (i - 1), cx[0] - scale[1] * (j - 1))


def probe_cell_grid(module: nn.Module) -> CellGrid:
    """Measure the cell grid of a feature extractor (convolutions, pools, BN, ReLU, residual adds)."""
    probe = _uniform_copy(module)
    last = None
    for size in PROBE_SIZES:
        found = _centres(probe, size)
        if found is None:
            continue
        if last is not None and np.allclose(np.ravel(found), np.ravel(last), atol=0.01):
            break
        last = found
    if last is None:
        raise ValueError("the network's output map is too small to locate its cells")
    scale, offset = last
    # float32 sums: keep 2 decimals (strides are integers, offsets multiples of 1/2 for these layers)
    return CellGrid((round(scale[0], 2) + 0.0, round(scale[1], 2) + 0.0),
                    (round(offset[0], 2) + 0.0, round(offset[1], 2) + 0.0))
