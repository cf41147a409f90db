"""Preprocessing settings and geometry: how a source mammogram becomes a model-sized image.

Modes:
- ``paper`` (Shen et al.): no crop, no flip, anisotropic resize to (height, width).
- ``crop``: laterality normalisation (chest wall on the left, found from the breast
  mask so wrong metadata does not matter), breast crop (threshold, erosion, largest
  component, dilation, bounding box + margin), aspect-preserving resize, zero padding
  at the right / bottom.

The geometry of every cached image (crop box, flip, resized extent) is stored next to
its PNG (`common.imaging.cache`), so ROI masks go through exactly the same transform
(nearest neighbour).

Resize: ``torch.nn.functional.interpolate(mode="bicubic", antialias=True)``: on one idle
core 0.07 s vs 0.14 s for Pillow's float ("F") or ``I;16`` bicubic at 4084x3328 -> 1152x896,
same result within 4e-5 (benchmarks/bench_preprocess.py prints them side by side).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from mammo_fl.common.imaging.breast import breast_mask_small, chest_wall_on_right
from mammo_fl.common.utils.errors import ConfigError

MODES = ("paper", "crop")
CACHE_VERSION = 1  # bump when the output of a given setting changes


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class PreprocessSettings:
    height: int
    width: int
    mode: str = "paper"
    crop_margin: float = 0.02  # crop mode: margin added around the breast box (fraction of side)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"unknown preprocessing mode {self.mode!r}; choose one of {', '.join(MODES)}")
        if int(self.height) < 8 or int(self.width) < 8:
            raise ConfigError(f"target size {self.height}x{self.width} is too small (min 8x8)")
        if not 0.0 <= float(self.crop_margin) < 0.5:
            raise ConfigError(f"crop_margin {self.crop_margin} must be in [0, 0.5)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessSettings:
        known = {k: data[k] for k in ("height", "width", "mode", "crop_margin") if k in data}
        try:
            return cls(**known)
        except TypeError as exc:
            raise ConfigError(f"invalid preprocessing settings {data!r}: {exc}") from None

    def key(self) -> str:
        """Short stable hash naming this setting's cache folder."""
        text = json.dumps({"v": CACHE_VERSION, **self.to_dict()}, sort_keys=True)
        tag = f"{self.mode}{self.height}x{self.width}"
        return f"{tag}-{hashlib.sha1(text.encode()).hexdigest()[:8]}"


def parse_size(text: str) -> tuple[int, int]:
    """`1152x896` -> (1152, 896) as (height, width)."""
    try:
        h, w = (int(v) for v in str(text).lower().replace("×", "x").split("x"))
    except ValueError:
        raise ConfigError(f"size {text!r} is not HEIGHTxWIDTH (e.g. 1152x896)") from None
    if h < 8 or w < 8:
        raise ConfigError(f"size {text!r} is too small (min 8x8)")
    return h, w


# --------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class Geometry:
    """How a source image maps to the cached one; masks follow the same steps."""

    src_shape: tuple[int, int]
    crop: tuple[int, int, int, int]  # y0, y1, x0, x1 in source pixels (end exclusive)
    flip: bool  # horizontal flip after the crop
    resized: tuple[int, int]  # extent of the resized content, placed at the top-left
    out_shape: tuple[int, int]

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Geometry:
        return cls(
            src_shape=tuple(d["src_shape"]),  # type: ignore[arg-type]
            crop=tuple(d["crop"]),  # type: ignore[arg-type]
            flip=bool(d["flip"]),
            resized=tuple(d["resized"]),  # type: ignore[arg-type]
            out_shape=tuple(d["out_shape"]),  # type: ignore[arg-type]
        )


def _crop_box(breast: np.ndarray, f: int, shape: tuple[int, int], margin: float) -> tuple[int, int, int, int]:
    rows = np.nonzero(breast.any(axis=1))[0]
    cols = np.nonzero(breast.any(axis=0))[0]
    if rows.size == 0:  # blank image: keep everything
        return 0, shape[0], 0, shape[1]
    my, mx = int(round(margin * shape[0])), int(round(margin * shape[1]))
    y0, y1 = max(0, rows[0] * f - my), min(shape[0], (rows[-1] + 1) * f + my)
    x0, x1 = max(0, cols[0] * f - mx), min(shape[1], (cols[-1] + 1) * f + mx)
    return int(y0), int(y1), int(x0), int(x1)


def plan_geometry(pixels: np.ndarray, settings: PreprocessSettings) -> Geometry:
    """Decide crop / flip / resize for one image (pixels in [0, 1], dense bright)."""
    shape = (int(pixels.shape[0]), int(pixels.shape[1]))
    out = (int(settings.height), int(settings.width))
    if settings.mode == "paper":
        return Geometry(shape, (0, shape[0], 0, shape[1]), False, out, out)
    breast, f = breast_mask_small(pixels)
    crop = _crop_box(breast, f, shape, settings.crop_margin)
    flip = chest_wall_on_right(breast)
    ch, cw = crop[1] - crop[0], crop[3] - crop[2]
    scale = min(out[0] / ch, out[1] / cw)
    resized = (max(1, min(out[0], round(ch * scale))), max(1, min(out[1], round(cw * scale))))
    return Geometry(shape, crop, flip, resized, out)


def _cut(array: np.ndarray, g: Geometry) -> np.ndarray:
    y0, y1, x0, x1 = g.crop
    part = array[y0:y1, x0:x1]
    return part[:, ::-1] if g.flip else part


def resize_image(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Antialiased bicubic resize of a float image, clipped to [0, 1]."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))[None, None]
    if x.shape[-2:] == (height, width):
        return np.clip(x[0, 0].numpy(), 0.0, 1.0)
    with torch.no_grad():
        y = F.interpolate(x, size=(height, width), mode="bicubic", antialias=True, align_corners=False)
    return np.clip(y[0, 0].numpy(), 0.0, 1.0)


def resize_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize (pixel centres) of a boolean mask."""
    rows = np.minimum((np.arange(height) + 0.5) * mask.shape[0] / height, mask.shape[0] - 1).astype(np.intp)
    cols = np.minimum((np.arange(width) + 0.5) * mask.shape[1] / width, mask.shape[1] - 1).astype(np.intp)
    return mask[np.ix_(rows, cols)]


def to_uint16(pixels: np.ndarray) -> np.ndarray:
    return np.round(np.clip(pixels, 0.0, 1.0) * 65535.0).astype(np.uint16)


def preprocess_array(pixels: np.ndarray, settings: PreprocessSettings) -> tuple[np.ndarray, Geometry]:
    """Float [0, 1] image -> (uint16 image at the target size, its geometry)."""
    g = plan_geometry(pixels, settings)
    content = resize_image(_cut(pixels, g), *g.resized)
    out = np.zeros(g.out_shape, dtype=np.float32)
    out[: g.resized[0], : g.resized[1]] = content
    return to_uint16(out), g


def apply_geometry_to_mask(mask: np.ndarray, g: Geometry) -> np.ndarray:
    """Same crop / flip / resize / pad as the image, nearest neighbour."""
    if tuple(mask.shape) != tuple(g.src_shape):
        raise ValueError(f"mask shape {mask.shape[0]}x{mask.shape[1]} differs from image {g.src_shape[0]}x{g.src_shape[1]}")
    out = np.zeros(g.out_shape, dtype=bool)
    out[: g.resized[0], : g.resized[1]] = resize_mask(_cut(mask.astype(bool), g), *g.resized)
    return out


def to_model_input(image: np.ndarray, mean: float) -> np.ndarray:
    """Cached uint16 image -> float32 (3, H, W) on the paper's 0..255 scale minus `mean`."""
    grey = image.astype(np.float32) * np.float32(255.0 / 65535.0) - np.float32(mean)
    return np.repeat(grey[None], 3, axis=0)
