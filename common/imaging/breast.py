"""Where the breast is: one breast-mask algorithm, used at two resolutions.

- `breast_mask(image)`: full resolution, for patch sampling (tissue fraction of a patch):
  threshold at a fraction of the maximum, largest connected component, holes filled.
- `breast_mask_small(pixels)`: on a block-averaged copy, for the crop box of `crop` mode:
  the same threshold and component, but eroded first (drops thin labels and lines that
  touch the breast) and dilated back instead of hole filling.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

CROP_WORK_SIDE = 512  # crop box searched on a downsampled copy (speed)


def breast_mask(
    image: np.ndarray, rel_threshold: float = 0.05, *, erode: int = 0, dilate: int = 0, fill_holes: bool = True
) -> np.ndarray:
    """Largest connected region brighter than `rel_threshold` x the image maximum.

    `erode` / `dilate`: binary erosion before labelling / dilation after it (iterations, 0 = none);
    `fill_holes`: fill the holes of the kept region.
    """
    peak = float(image.max()) if image.size else 0.0
    if peak <= 0:
        return np.zeros(image.shape, dtype=bool)
    fg = image > rel_threshold * peak
    if erode:
        fg = ndimage.binary_erosion(fg, iterations=erode)
    labels, n = ndimage.label(fg)
    if n == 0:
        return np.zeros(image.shape, dtype=bool)
    sizes = ndimage.sum_labels(fg, labels, index=np.arange(1, n + 1))
    region = labels == (int(np.argmax(sizes)) + 1)
    if dilate:
        region = ndimage.binary_dilation(region, iterations=dilate)
    if fill_holes:
        region = ndimage.binary_fill_holes(region)
    return region


def downsample_factor(shape: tuple[int, int], work_side: int = CROP_WORK_SIDE) -> int:
    """Block size that brings the longer side to at most `work_side`."""
    return max(1, int(np.ceil(max(shape) / work_side)))


def block_mean(pixels: np.ndarray, factor: int) -> np.ndarray:
    """Mean over `factor` x `factor` blocks (the ragged bottom/right edge is dropped)."""
    if factor <= 1:
        return pixels
    h, w = (pixels.shape[0] // factor) * factor, (pixels.shape[1] // factor) * factor
    return pixels[:h, :w].reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3))


def breast_mask_small(pixels: np.ndarray) -> tuple[np.ndarray, int]:
    """Breast region on a block-averaged copy: threshold 5 % of max, erosion removes thin labels /
    lines, keep the largest component, dilate back. Returns (mask, factor)."""
    factor = downsample_factor(pixels.shape)
    return breast_mask(block_mean(pixels, factor), 0.05, erode=2, dilate=2, fill_holes=False), factor


def chest_wall_on_right(breast: np.ndarray) -> bool:
    """The chest wall is the side where the breast is widest: compare tissue area in
    the left and right halves of the breast's column extent."""
    cols = breast.sum(axis=0)
    nz = np.nonzero(cols)[0]
    if nz.size == 0:
        return False
    lo, hi = nz[0], nz[-1] + 1
    mid = (lo + hi) // 2
    return float(cols[mid:hi].sum()) > float(cols[lo:mid].sum())
