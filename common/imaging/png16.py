"""PNG files of the project: 16-bit grey images (cache, patches) and 8-bit masks.

One reader and one writer for every PNG the project writes itself. Writes are atomic
(`common.utils.atomic`), so a crashed or parallel writer never leaves half an image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from mammo_fl.common.utils.atomic import atomic_path
from mammo_fl.common.utils.errors import DataError

DEFAULT_LEVEL = 6  # Pillow's default zlib level


def read_png(path: str | Path) -> np.ndarray:
    """The PNG's pixels as stored (grey: (H, W); colour: (H, W, C)); DataError when unreadable."""
    try:
        with Image.open(path) as im:
            return np.array(im)
    except (OSError, ValueError) as exc:
        raise DataError(path, f"cannot read PNG: {exc}") from None


def read_png16(path: str | Path) -> np.ndarray:
    """A grey PNG (16-bit cache images and patches, 8-bit masks) as uint16 (H, W); DataError otherwise."""
    arr = read_png(path)
    if arr.ndim != 2:
        raise DataError(path, f"expected a grey PNG, got shape {arr.shape}")
    return arr if arr.dtype == np.uint16 else arr.astype(np.uint16)


def write_png(path: str | Path, array: np.ndarray, compress_level: int = DEFAULT_LEVEL) -> None:
    """Atomically write `array` as a PNG in the mode its dtype implies (uint8 -> L, uint16 -> I;16)."""
    with atomic_path(path) as tmp:
        Image.fromarray(np.ascontiguousarray(array)).save(tmp, format="PNG", compress_level=compress_level)


def write_png16(path: str | Path, array: np.ndarray, compress_level: int = DEFAULT_LEVEL) -> None:
    """Atomically write a grey image as a 16-bit PNG (values cast to uint16)."""
    write_png(path, np.asarray(array).astype(np.uint16, copy=False), compress_level)
