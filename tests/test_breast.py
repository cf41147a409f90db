"""One breast-mask algorithm (common.imaging.breast) gives exactly what its two former copies gave.

The reference functions below are verbatim copies of the two implementations it replaced
(`breast_mask_small` of the preprocessing cache, `breast_mask` of patch sampling): crop boxes,
flips and sampled patches must not change.
"""

from __future__ import annotations

import numpy as np
import pytest
from data_fixtures import breast_phantom
from scipy import ndimage

from mammo_fl.common.imaging.breast import breast_mask, breast_mask_small


def _old_breast_mask_small(pixels: np.ndarray) -> tuple[np.ndarray, int]:
    f = max(1, int(np.ceil(max(pixels.shape) / 512)))
    h, w = (pixels.shape[0] // f) * f, (pixels.shape[1] // f) * f
    small = pixels[:h, :w].reshape(h // f, f, w // f, f).mean(axis=(1, 3)) if f > 1 else pixels
    top = float(small.max())
    if top <= 0:
        return np.zeros(small.shape, dtype=bool), f
    fg = ndimage.binary_erosion(small > 0.05 * top, iterations=2)
    labels, n = ndimage.label(fg)
    if n == 0:
        return np.zeros(small.shape, dtype=bool), f
    sizes = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, n + 1))
    largest = labels == (int(np.argmax(sizes)) + 1)
    return ndimage.binary_dilation(largest, iterations=2), f


def _old_breast_mask(image: np.ndarray, rel_threshold: float = 0.05) -> np.ndarray:
    peak = float(image.max()) if image.size else 0.0
    if peak <= 0:
        return np.zeros(image.shape, dtype=bool)
    fg = image > rel_threshold * peak
    labels, n = ndimage.label(fg)
    if n == 0:
        return fg
    sizes = ndimage.sum_labels(fg, labels, index=np.arange(1, n + 1))
    largest = labels == (int(np.argmax(sizes)) + 1)
    return ndimage.binary_fill_holes(largest)


def _images() -> list[np.ndarray]:
    """Phantoms with labels, lines, holes and noise; small and large (downsampled) sizes; blank."""
    out = []
    for seed, (h, w) in enumerate([(64, 48), (144, 112), (700, 530), (1300, 1024)]):
        img = breast_phantom(h, w, chest_wall="left" if seed % 2 else "right", seed=seed).astype(np.float32)
        rng = np.random.default_rng(seed)
        img[2 : 2 + h // 10, w - w // 6 : w - 2] = 60000  # a bright label
        img[h // 2, :] = 50000  # a thin line touching the breast
        cy, cx = h // 2, w // 6
        img[cy - h // 20 : cy + h // 20, cx - w // 20 : cx + w // 20] = 0  # a hole
        img += rng.normal(0, 400, img.shape).astype(np.float32)
        out.append(np.clip(img, 0, 65535).astype(np.uint16))
    out.append(np.zeros((40, 30), np.uint16))
    return out


@pytest.mark.parametrize("index", range(5))
def test_breast_mask_small_is_unchanged(index: int) -> None:
    pixels = _images()[index].astype(np.float32) / 65535.0  # the cache works on [0, 1] floats
    mask, factor = breast_mask_small(pixels)
    old_mask, old_factor = _old_breast_mask_small(pixels)
    assert factor == old_factor and mask.dtype == old_mask.dtype and np.array_equal(mask, old_mask)
    assert mask.any() == (index < 4)  # blank image: empty mask


@pytest.mark.parametrize("index", range(5))
@pytest.mark.parametrize("threshold", [0.05, 0.2])
def test_breast_mask_is_unchanged(index: int, threshold: float) -> None:
    image = _images()[index]  # patch sampling works on the cached uint16 image
    mask = breast_mask(image, threshold)
    assert np.array_equal(mask, _old_breast_mask(image, threshold)) and mask.any() == (index < 4)
