"""Render a heatmap overlay for a reader: windowed mammogram, translucent heatmap, ROI outlines, text.

Drawn on the stored DICOM grid (scaled to a screen-sized display), not on the model's resized copy,
so the picture has the anatomy's true proportions and the peak marker sits at `peak_row, peak_col`.
Without a VOI window in the file (digitised film), the grey scale is stretched over the breast's own
0.5-99.8 percentiles, as a reader would window it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from mammo_fl.common.imaging.geometry import Geometry
from mammo_fl.common.pipeline.cell_grid import CellGrid, sample_cells
from mammo_fl.common.pipeline.source_grid import inside_crop, source_to_model

DISPLAY_MIN, DISPLAY_MAX = 512, 1024  # display height: small images are enlarged, large ones reduced
HEAT_ALPHA = 0.65  # opacity at map value 1; it falls with the square of the value, so weak evidence
                  # (0.3 -> 0.06) leaves the mammogram readable and only strong evidence is coloured
ROI_COLOURS = {"MALIGNANT": (255, 40, 40), "BENIGN": (40, 230, 90)}
DISCLAIMER = "RESEARCH OVERLAY - NOT FOR DIAGNOSTIC USE"


@dataclass
class OverlayContent:
    grey: np.ndarray  # float [0, 1] on the display grid
    heat: np.ndarray  # float [0, 1] on the display grid
    outlines: list[tuple[np.ndarray, tuple[int, int, int]]] = field(default_factory=list)
    peak: tuple[float, float] | None = None  # display (row, col)
    lines: list[str] = field(default_factory=list)  # top-left text, first line large


def display_shape(src_shape: tuple[int, int]) -> tuple[int, int]:
    height = int(np.clip(src_shape[0], DISPLAY_MIN, DISPLAY_MAX))
    return height, max(1, round(src_shape[1] * height / src_shape[0]))


def display_to_source(shape: tuple[int, int], src_shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Source (row, col) coordinates of every display pixel centre."""
    rows = (np.arange(shape[0]) + 0.5) * src_shape[0] / shape[0] - 0.5
    cols = (np.arange(shape[1]) + 0.5) * src_shape[1] / shape[1] - 0.5
    return np.meshgrid(rows, cols, indexing="ij")


def source_to_display(row: float, col: float, shape: tuple[int, int], src_shape: tuple[int, int]
                      ) -> tuple[float, float]:
    return (row + 0.5) * shape[0] / src_shape[0] - 0.5, (col + 0.5) * shape[1] / src_shape[1] - 0.5


def reading_window(pixels: np.ndarray, voi: str) -> np.ndarray:
    """[0, 1] grey for display: the file's own VOI window when it has one, else a breast-percentile stretch."""
    if voi != "none":
        return np.clip(pixels, 0.0, 1.0).astype(np.float32)
    breast = pixels[pixels > 0.05 * float(pixels.max())] if pixels.max() > 0 else pixels.ravel()
    lo, hi = np.percentile(breast, [0.5, 99.8]) if breast.size else (0.0, 1.0)
    return np.clip((pixels - lo) / max(float(hi - lo), 1e-6), 0.0, 1.0).astype(np.float32)


def resize_grey(grey: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    image = Image.fromarray(grey.astype(np.float32))
    return np.asarray(image.resize((shape[1], shape[0]), Image.Resampling.BILINEAR, reducing_gap=2.0))


def heat_on_display(cell_map: np.ndarray, grid: CellGrid, g: Geometry, shape: tuple[int, int]) -> np.ndarray:
    """The cell map sampled at every display pixel (0 where the model saw nothing: outside the crop)."""
    rows, cols = display_to_source(shape, g.src_shape)
    ys, xs = source_to_model(rows, cols, g)
    heat = sample_cells(cell_map, grid, ys, xs)
    return np.where(inside_crop(rows, cols, g), np.clip(heat, 0.0, 1.0), 0.0).astype(np.float32)


def mask_on_display(mask: np.ndarray, g: Geometry, shape: tuple[int, int]) -> np.ndarray:
    """A model-grid mask looked up (nearest) at every display pixel."""
    rows, cols = display_to_source(shape, g.src_shape)
    ys, xs = source_to_model(rows, cols, g)
    yi = np.clip(np.rint(ys).astype(np.intp), 0, mask.shape[0] - 1)
    xi = np.clip(np.rint(xs).astype(np.intp), 0, mask.shape[1] - 1)
    return mask[yi, xi] & inside_crop(rows, cols, g)


def outline(mask: np.ndarray, width: int) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, iterations=max(1, width))


def _colormap() -> np.ndarray:
    import matplotlib

    return (matplotlib.colormaps["jet"](np.linspace(0.0, 1.0, 256))[:, :3] * 255.0).astype(np.float32)


def text_font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one bitmap size
        return ImageFont.load_default()


def compose(content: OverlayContent) -> Image.Image:
    """The RGB picture: grey, heat blended by its own value, outlines, peak ring, text."""
    grey = np.repeat((content.grey * 255.0)[..., None], 3, axis=2)
    heat = np.clip(content.heat, 0.0, 1.0)
    colour = _colormap()[np.rint(heat * 255).astype(np.intp)]
    alpha = (HEAT_ALPHA * heat**2)[..., None]
    rgb = grey * (1.0 - alpha) + colour * alpha
    for mask, rgb_colour in content.outlines:
        rgb[mask] = rgb_colour
    image = Image.fromarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    h = image.height
    if content.peak is not None:
        r, (py, px) = max(6, h // 60), content.peak
        draw.ellipse((px - r, py - r, px + r, py + r), outline=(255, 255, 255), width=max(2, h // 400))
    size, margin = max(12, h // 24), max(6, h // 80)
    y = margin
    for i, line in enumerate(content.lines):
        line_size = size if i == 0 else max(10, int(size * 0.7))
        draw.text((margin, y), line, fill=(255, 255, 255), font=text_font(line_size), stroke_width=2,
                  stroke_fill=(0, 0, 0))
        y += line_size + 4
    small = text_font(max(10, h // 45))
    draw.text((margin, h - max(10, h // 45) - margin), DISCLAIMER, fill=(255, 230, 0), font=small, stroke_width=2,
              stroke_fill=(0, 0, 0))
    return image


def save_png(image: Image.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG", compress_level=6)  # optimize=True costs ~1.5 s an image
    return path
