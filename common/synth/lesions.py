"""Masses and calcification clusters with pixel ROIs.

Malignancy is carried by morphology only: benign and malignant lesions draw their
size, contrast and position from the same distributions; what differs is the
outline (smooth ellipse vs irregular/spiculated) and, for calcifications, the
speck population (few coarse round specks vs many fine pleomorphic ones in
linear/branching arrangements).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

MASS_MORPHOLOGIES = {"BENIGN": ("circumscribed", "lobulated"), "MALIGNANT": ("spiculated", "irregular")}
CALC_MORPHOLOGIES = {
    "BENIGN": ("coarse", "round_regular", "lucent_center"),
    "MALIGNANT": ("fine_pleomorphic", "fine_linear_branching"),
}


@dataclass(frozen=True)
class LesionSpec:
    """What a lesion is (fixed at planning time, shared by the CC and MLO views of a breast)."""

    kind: str  # "mass" | "calcification"
    pathology: str  # "MALIGNANT" | "BENIGN" | "BENIGN_WITHOUT_CALLBACK"
    morphology: str  # one of MASS_MORPHOLOGIES / CALC_MORPHOLOGIES
    size_frac: float  # mass diameter or cluster diameter as a fraction of image width
    contrast: float  # added density (same distribution for benign and malignant)
    shape_seed: int

    @property
    def malignant(self) -> bool:
        return self.pathology == "MALIGNANT"


@dataclass
class RenderedLesion:
    spec: LesionSpec
    density: np.ndarray  # float32 additive density over `window`
    window: tuple[int, int, int, int]  # y0, y1, x0, x1 in image coordinates
    polygon: np.ndarray  # (N, 2) float x, y in image coordinates (the ROI outline)
    specks: list[tuple[float, float, float]] = field(default_factory=list)  # (x, y, radius) for calcifications
    # Masses displace tissue: `density` is then a 0..1 weight pulling the local density towards
    # glandular density + `blend_excess` (so a mass is about as dense as gland, not brighter than
    # everything; it is masked in dense breasts and conspicuous in fatty ones, as in real images).
    blend_excess: float | None = None


def polygon_mask(polygon: np.ndarray, height: int, width: int) -> np.ndarray:
    """Fill a polygon (x, y vertices) into a bool mask."""
    img = Image.new("L", (width, height), 0)
    ImageDraw.Draw(img).polygon([(float(x), float(y)) for x, y in polygon], fill=1, outline=1)
    return np.asarray(img, dtype=bool)


def _harmonics(theta: np.ndarray, rng: np.random.Generator, kmin: int, kmax: int, amp: float) -> np.ndarray:
    out = np.zeros_like(theta)
    for k in range(kmin, kmax + 1):
        out += amp * rng.normal() / np.sqrt(k) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    return out


def _mass_radius_fn(spec: LesionSpec, radius: float, rng: np.random.Generator):
    """r(theta) of the mass core, as a closure over its random shape parameters."""
    aspect = rng.uniform(0.65, 1.0)
    orient = rng.uniform(0, np.pi)
    state = rng.bit_generator.state

    def r_of(theta: np.ndarray) -> np.ndarray:
        local = np.random.default_rng()
        local.bit_generator.state = state  # same harmonics for every call
        t = theta - orient
        ell = radius * aspect / np.sqrt((aspect * np.cos(t)) ** 2 + np.sin(t) ** 2)
        if spec.morphology == "circumscribed":
            wob = _harmonics(theta, local, 2, 4, 0.015)
        elif spec.morphology == "lobulated":
            wob = _harmonics(theta, local, 2, 3, 0.1) + _harmonics(theta, local, 5, 7, 0.03)
        elif spec.morphology == "irregular":
            wob = _harmonics(theta, local, 3, 14, 0.2)
        else:  # spiculated: moderately irregular core, spicules added separately
            wob = _harmonics(theta, local, 3, 12, 0.08)
        return ell * np.clip(1.0 + wob, 0.45, 1.6)

    return r_of


def render_mass(spec: LesionSpec, center: tuple[float, float], image_width: int, conspicuity: float) -> RenderedLesion:
    rng = np.random.default_rng(spec.shape_seed)
    radius = spec.size_frac * image_width / 2.0
    r_of = _mass_radius_fn(spec, radius, rng)
    spicules = []
    if spec.morphology == "spiculated":
        n = int(rng.integers(10, 22))
        angles = np.sort(rng.uniform(0, 2 * np.pi, n))
        lengths = radius * rng.uniform(0.8, 1.9, n)
        # At least ~5 px wide at 896-px width so they survive 4x downsampling.
        widths = np.maximum(radius * rng.uniform(0.06, 0.1, n), image_width * 0.0055)
        spicules = list(zip(angles, lengths, widths, rng.uniform(-0.25, 0.25, n)))
    reach = radius * 1.7 + (max((s[1] for s in spicules), default=0.0) if spicules else 0.0)
    cx, cy = center
    half = int(np.ceil(reach + 4))
    y0, x0 = int(np.floor(cy)) - half, int(np.floor(cx)) - half
    yy, xx = np.mgrid[y0 : y0 + 2 * half + 1, x0 : x0 + 2 * half + 1].astype(np.float32)
    dx, dy = xx - cx, yy - cy
    theta = np.arctan2(dy, dx)
    s = np.hypot(dx, dy) / r_of(theta)
    edge = {"circumscribed": 0.035, "lobulated": 0.05, "irregular": 0.1, "spiculated": 0.1}[spec.morphology]
    inside = 1.0 / (1.0 + np.exp(np.clip((s - 1.0) / edge, -50, 50)))
    dome = 0.6 + 0.4 * np.sqrt(np.clip(1.0 - s * s, 0.0, 1.0))
    mottle = 1.0 + 0.08 * np.cos(dx * 0.7 / max(radius * 0.15, 1.0)) * np.cos(dy * 0.6 / max(radius * 0.15, 1.0))
    density = 0.72 * dome * inside * mottle
    for ang, length, width, bend in spicules:
        base = r_of(np.array([ang]))[0] * 0.85
        density = np.maximum(density, 0.6 * _spicule(dx, dy, ang, base, length, width, bend))
    # ROI outline: the core, plus spikes where annotators traced the spicules.
    thetas = np.linspace(0, 2 * np.pi, 240, endpoint=False)
    margin = {"circumscribed": 1.04, "lobulated": 1.05, "irregular": 1.1, "spiculated": 1.08}[spec.morphology]
    r_roi = r_of(thetas) * margin
    for ang, length, width, _ in spicules:
        base = r_of(np.array([ang]))[0]
        half_angle = 1.6 * width / base
        d = np.abs(np.angle(np.exp(1j * (thetas - ang))))
        spike = base + 0.7 * length * np.clip(1.0 - d / half_angle, 0.0, None)
        r_roi = np.maximum(r_roi, spike)
    polygon = np.stack([cx + r_roi * np.cos(thetas), cy + r_roi * np.sin(thetas)], axis=1)
    window = (y0, y0 + 2 * half + 1, x0, x0 + 2 * half + 1)
    excess = (spec.contrast - 0.1) * conspicuity
    return RenderedLesion(spec, density.astype(np.float32), window, polygon, blend_excess=excess)


def _spicule(dx, dy, ang, base, length, width, bend) -> np.ndarray:
    """A tapering, slightly curved linear density from the mass border outward."""
    ux, uy = np.cos(ang), np.sin(ang)
    along = dx * ux + dy * uy - base
    across = -dx * uy + dy * ux
    t = np.clip(along / length, 0.0, 1.0)
    across = across - bend * length * t * t  # gentle curvature
    w = width * (1.0 - 0.7 * t) / 2.0
    profile = np.exp(-((across / w) ** 2))
    fade = np.where(along < 0, np.exp(-((along / (width * 2)) ** 2)), 1.0 - 0.6 * t)
    return profile * fade * (along < length)


def _speck_layout(spec: LesionSpec, rng: np.random.Generator, cluster_radius: float, image_width: int):
    """Speck centres (relative to the cluster centre), radii and aspect ratios."""
    w = image_width
    if spec.malignant:
        n = int(rng.integers(10, 23))
        radii = w * rng.uniform(0.0026, 0.0046, n)
        aspects = rng.uniform(0.35, 1.0, n)
        # Linear / branching arrangement: specks along 1-3 random segments from a common root.
        n_branches = 1 if spec.morphology == "fine_pleomorphic" and rng.random() < 0.4 else int(rng.integers(2, 4))
        branch = rng.integers(0, n_branches, n)
        angles = rng.uniform(0, 2 * np.pi, n_branches)
        t = rng.uniform(-1.1 if n_branches == 1 else 0.0, 1.2, n) * cluster_radius
        jitter = rng.normal(0, 0.15 * cluster_radius, n)
        a = angles[branch]
        xy = np.stack([t * np.cos(a) - jitter * np.sin(a), t * np.sin(a) + jitter * np.cos(a)], axis=1)
    else:
        n = int(rng.integers(3, 8))
        radii = w * rng.uniform(0.0065, 0.012, n)
        aspects = rng.uniform(0.75, 1.0, n)
        r = cluster_radius * np.sqrt(rng.uniform(0, 1, n))
        a = rng.uniform(0, 2 * np.pi, n)
        xy = np.stack([r * np.cos(a), r * np.sin(a)], axis=1)
    return xy, radii, aspects, rng.uniform(0, np.pi, len(radii))


def render_calcifications(
    spec: LesionSpec, center: tuple[float, float], image_width: int, conspicuity: float
) -> RenderedLesion:
    rng = np.random.default_rng(spec.shape_seed)
    cluster_radius = spec.size_frac * image_width / 2.0
    xy, radii, aspects, orients = _speck_layout(spec, rng, cluster_radius, image_width)
    cx, cy = center
    half = int(np.ceil(cluster_radius * 1.3 + radii.max() * 3 + 4))
    y0, x0 = int(np.floor(cy)) - half, int(np.floor(cx)) - half
    yy, xx = np.mgrid[y0 : y0 + 2 * half + 1, x0 : x0 + 2 * half + 1].astype(np.float32)
    density = np.zeros(yy.shape, np.float32)
    contrast = spec.contrast * conspicuity
    specks = []
    for (sx, sy), rad, asp, ori in zip(xy, radii, aspects, orients):
        px, py = cx + sx, cy + sy
        dx, dy = xx - px, yy - py
        u = dx * np.cos(ori) + dy * np.sin(ori)
        v = (-dx * np.sin(ori) + dy * np.cos(ori)) / asp
        s = np.hypot(u, v) / rad
        blob = 1.0 / (1.0 + np.exp(np.clip((s - 1.0) / 0.18, -50, 50)))
        if spec.morphology == "lucent_center":
            blob *= 1.0 - 0.6 * np.exp(-((s / 0.55) ** 2))
        blob *= rng.uniform(0.8, 1.0)
        density = np.maximum(density, contrast * blob)
        specks.append((float(px), float(py), float(rad)))
    polygon = _cluster_outline(xy + np.array([cx, cy]), radii, cluster_radius, rng)
    window = (y0, y0 + 2 * half + 1, x0, x0 + 2 * half + 1)
    return RenderedLesion(spec, density, window, polygon, specks)


def _cluster_outline(points: np.ndarray, radii: np.ndarray, cluster_radius: float, rng: np.random.Generator):
    """A rough oval around the specks, as a radiologist outlines a cluster."""
    centre = points.mean(axis=0)
    thetas = np.linspace(0, 2 * np.pi, 96, endpoint=False)
    rel = points - centre
    # Support function of the speck cloud, widened by speck size and a margin, then smoothed.
    proj = rel @ np.stack([np.cos(thetas), np.sin(thetas)])
    reach = proj.max(axis=0) + radii.max() * 1.5 + 0.2 * cluster_radius
    kernel = np.exp(-0.5 * (np.arange(-8, 9) / 3.0) ** 2)
    padded = np.concatenate([reach[-8:], reach, reach[:8]])
    reach = np.convolve(padded, kernel / kernel.sum(), mode="same")[8:-8]
    reach *= 1.0 + 0.03 * rng.normal(size=reach.shape)
    return np.stack([centre[0] + reach * np.cos(thetas), centre[1] + reach * np.sin(thetas)], axis=1)


def render_lesion(spec: LesionSpec, center: tuple[float, float], image_width: int, conspicuity: float) -> RenderedLesion:
    if spec.kind == "mass":
        return render_mass(spec, center, image_width, conspicuity)
    return render_calcifications(spec, center, image_width, conspicuity)


def add_into(image: np.ndarray, lesion: RenderedLesion, thickness: np.ndarray, gland: float) -> None:
    """Put the lesion into the projected density `image` in place (clipped at the borders)."""
    y0, y1, x0, x1 = lesion.window
    h, w = image.shape
    cy0, cy1, cx0, cx1 = max(y0, 0), min(y1, h), max(x0, 0), min(x1, w)
    if cy0 >= cy1 or cx0 >= cx1:
        return
    patch = lesion.density[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
    region = image[cy0:cy1, cx0:cx1]
    if lesion.blend_excess is None:
        region += patch
        return
    t = thickness[cy0:cy1, cx0:cx1]
    target = t * (gland + lesion.blend_excess)
    floor = 0.5 * lesion.blend_excess * t  # still visible (if subtle) inside dense tissue
    region += patch * np.maximum(target - region, floor)
