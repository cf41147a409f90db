"""Render one synthetic mammogram (pixels + ROIs) from its ImageSpec."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mammo_fl.common.synth.acquisition import Acquired, acquire
from mammo_fl.common.synth.incidental import add_incidental_findings
from mammo_fl.common.synth.lesions import LesionSpec, RenderedLesion, add_into, polygon_mask, render_lesion
from mammo_fl.common.synth.profiles import VendorProfile
from mammo_fl.common.synth.shapes import BreastGeometry, breast_geometry, skin_line
from mammo_fl.common.synth.texture import glandular_fraction, power_law_noise, ridges, upsample

FAT, GLAND, MUSCLE = 0.2, 0.62, 0.6  # projected density of fully compressed tissue


@dataclass
class ImageSpec:
    """Everything needed to render and file one image; fixed by the planner."""

    index: int
    image_id: str
    patient_id: str
    laterality: str  # "L" | "R"
    view: str  # "CC" | "MLO"
    density: int  # ACR 1..4
    birads: str  # "1".."6", "4a".. (text)
    label: int  # 1 = malignant finding in this image
    lesions: tuple[LesionSpec, ...]
    profile: VendorProfile
    height: int
    width: int
    seed: int
    site: str = ""
    extra: dict = field(default_factory=dict)  # layout-specific naming (file ids, split, hashes)


@dataclass
class RenderedRoi:
    spec: LesionSpec
    polygon: np.ndarray  # (N, 2) x, y
    mask: np.ndarray  # bool (H, W)
    bbox: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive)
    specks: list[tuple[float, float, float]]


@dataclass
class RenderedImage:
    spec: ImageSpec
    acquired: Acquired
    rois: list[RenderedRoi]
    breast: np.ndarray  # bool (H, W)
    pixel_spacing_mm: float


def _flip(geometry: BreastGeometry) -> BreastGeometry:
    w = geometry.mask.shape[1]
    return BreastGeometry(
        geometry.mask[:, ::-1].copy(), geometry.thickness[:, ::-1].copy(), geometry.rho[:, ::-1].copy(),
        geometry.pectoral[:, ::-1].copy(), (w - 1 - geometry.nipple[0], geometry.nipple[1]),
        (w - 1 - geometry.center[0], geometry.center[1]), geometry.depth,
    )


def _place(geometry: BreastGeometry, radius: float, taken: list[tuple[float, float, float]], rng: np.random.Generator):
    """A lesion centre well inside the breast, off the pectoral muscle and other lesions."""
    h, w = geometry.mask.shape
    step = max(int(min(h, w) / 96), 1)
    ok = (geometry.thickness[::step, ::step] > 0.8) & (geometry.pectoral[::step, ::step] < 0.05)
    ys, xs = np.nonzero(ok)
    ys, xs = ys * step, xs * step
    margin = min(radius * 1.1, 0.3 * min(h, w))
    inside = (ys > margin) & (ys < h - margin) & (xs > margin) & (xs < w - margin)
    ys, xs = (ys[inside], xs[inside]) if inside.any() else (ys, xs)
    if len(ys) == 0:
        return float(w / 2), float(h / 2)
    for _ in range(30):
        i = int(rng.integers(len(ys)))
        x, y = float(xs[i] + rng.uniform(0, step)), float(ys[i] + rng.uniform(0, step))
        if all(np.hypot(x - tx, y - ty) > (radius + tr) for tx, ty, tr in taken):
            return x, y
    return x, y


def _scaled(geometry: BreastGeometry, factor: int, shape: tuple[int, int]) -> BreastGeometry:
    if factor == 1:
        return geometry
    rho = upsample(geometry.rho, shape)
    return BreastGeometry(
        rho < 1.0, upsample(geometry.thickness, shape), rho, upsample(geometry.pectoral, shape),
        (geometry.nipple[0] * factor, geometry.nipple[1] * factor),
        (geometry.center[0] * factor, geometry.center[1] * factor), geometry.depth * factor,
    )


def tissue_density(spec: ImageSpec, rng: np.random.Generator) -> tuple[np.ndarray, BreastGeometry]:
    """Projected density of the normal breast (dense tissue high), chest wall on the correct side.

    Smooth anatomy is drawn at half resolution for large images (4x cheaper), then fine
    parenchymal texture is added at full resolution.
    """
    h, w = spec.height, spec.width
    factor = 2 if min(h, w) >= 400 else 1
    hs, ws = -(-h // factor), -(-w // factor)
    small = breast_geometry(hs, ws, spec.view, rng)
    if spec.laterality == "R":
        small = _flip(small)
    frac, strands = glandular_fraction(small, spec.density, rng)
    trabeculae = ridges(strands) * (1.0 - 0.6 * frac)  # ligaments show best against fat
    density = small.thickness * (FAT + (GLAND - FAT) * frac + 0.07 * trabeculae)
    if spec.view == "MLO":
        fibres = power_law_noise((hs, ws), 3.0, rng)
        muscle = small.thickness * (MUSCLE + 0.025 * fibres)
        density = density * (1.0 - small.pectoral) + muscle * small.pectoral
    geometry = _scaled(small, factor, (h, w))
    if factor > 1:
        density = upsample(density, (h, w))
    fine = power_law_noise((h, w), 2.4, rng)
    density = density + 0.012 * fine * geometry.thickness
    density += 0.05 * skin_line(geometry, 2.5 * h / 1152.0)
    return density.astype(np.float32), geometry


def add_skin_thickening(density: np.ndarray, geometry: BreastGeometry, spec: ImageSpec, conspicuity: float,
                        share: float) -> bool:
    """A secondary sign of malignancy on `share` of malignant images: the skin band 3-5x its normal
    width and brighter. Returns whether this image got it.

    It lies away from the lesion, so a lesion-centred patch never shows it: only a model that
    looks at the whole image can use it (the paper's case for end-to-end training over heatmaps).
    Its own random stream: the rest of the image is the same with or without it.
    """
    if spec.label != 1 or share <= 0:
        return False
    rng = np.random.default_rng([spec.seed, spec.index, 0x5C1])
    if rng.random() >= share:
        return False
    width = float(rng.uniform(3.0, 5.0)) * 2.5 * spec.height / 1152.0
    density += 0.06 * conspicuity * skin_line(geometry, width)
    return True


def render_image(spec: ImageSpec, conspicuity: float = 1.0, secondary_signs: float = 0.0) -> RenderedImage:
    """`secondary_signs`: share of malignant images that also show skin thickening (0 = none)."""
    rng = np.random.default_rng([spec.seed, spec.index])
    density, geometry = tissue_density(spec, rng)
    add_incidental_findings(density, geometry, spec.view, rng, conspicuity)
    add_skin_thickening(density, geometry, spec, conspicuity, secondary_signs)
    lesion_free = density.copy()
    h, w = density.shape
    rois: list[RenderedRoi] = []
    taken: list[tuple[float, float, float]] = []
    for lesion_spec in spec.lesions:
        radius = lesion_spec.size_frac * w / 2.0
        center = _place(geometry, radius * 1.3, taken, rng)
        taken.append((center[0], center[1], radius * 1.3))
        lesion: RenderedLesion = render_lesion(lesion_spec, center, w, conspicuity)
        add_into(density, lesion, geometry.thickness, GLAND)
        mask = polygon_mask(lesion.polygon, h, w) & geometry.mask
        if not mask.any():
            mask = polygon_mask(lesion.polygon, h, w)
        ys, xs = np.nonzero(mask)
        bbox = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1) if len(xs) else (0, 0, 1, 1)
        rois.append(RenderedRoi(lesion_spec, lesion.polygon, mask, bbox, lesion.specks))
    acquired = acquire(density, geometry.mask, geometry.thickness, spec.profile, rng, lesion_free)
    return RenderedImage(spec, acquired, rois, geometry.mask, spec.profile.field_height_mm / h)
