"""S1 / S10 patch sampling from annotated mammograms (Shen et al. 2019, Methods: patch sampling).

Rules (all sizes in pixels of the preprocessed image):
- a patch "overlaps" a lesion when `inter / roi_area > cutoff` OR `inter / patch_area > cutoff`
  (the either-or form makes small and large lesions both reachable);
- positive patches: S1 = one patch centred on the ROI centroid; S<n> (n > 1) = n patches whose
  centres are uniform inside the ROI box and which overlap the ROI at the positive cutoff (0.9),
  relaxed x0.95 after every 100 failed tries;
- background patches (as many per image as positives per ROI): >= 75 % breast tissue (relaxed
  x0.95 per 100 failures) and NOT overlapping ANY lesion of the image above 0.35 (never relaxed);
- optional hard negatives: bright blobs (scale-normalised LoG maxima) that pass the background
  rules count towards the background quota.
One RNG, seeded once per run, drives everything. The patch-set writer (`patch_set.py`) stores
the patches on disk.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from mammo_fl.common.imaging.breast import breast_mask
from mammo_fl.common.utils.errors import ConfigError, MammoError


class SamplingFailed(MammoError):
    """No acceptable patch position was found within the try budget."""


@dataclass(frozen=True)
class SamplingSettings:
    """How patches are drawn from one image. `scheme` is "S1", "S10" or any "S<n>"."""

    patch_size: int
    scheme: str = "S10"
    pos_cutoff: float = 0.9
    neg_cutoff: float = 0.35
    min_tissue: float = 0.75
    blob_negatives: int = 0  # at most this many hard negatives per image (part of the background quota)
    tissue_threshold: float = 0.05  # breast = pixels above this fraction of the image maximum
    max_tries: int = 5000
    relax_every: int = 100

    def __post_init__(self) -> None:
        if self.patch_size < 4:
            raise ConfigError(f"patches.patch_size must be >= 4, got {self.patch_size}")
        if not re.fullmatch(r"[sS][1-9][0-9]*", str(self.scheme)):
            raise ConfigError(f"patches.scheme must look like S1 or S10, got {self.scheme!r}")
        for name in ("pos_cutoff", "neg_cutoff", "min_tissue", "tissue_threshold"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"patches.{name} must be in [0, 1], got {value}")

    @property
    def per_roi(self) -> int:
        return int(str(self.scheme)[1:])

    @property
    def background_per_image(self) -> int:
        return self.per_roi

    @property
    def centroid_only(self) -> bool:
        return self.per_roi == 1

    @classmethod
    def from_config(cls, section: dict[str, Any]) -> SamplingSettings:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(section) - known
        if unknown:
            raise ConfigError(f"unknown patches option(s): {', '.join(sorted(unknown))}")
        return cls(**section)


@dataclass(frozen=True)
class RoiInput:
    """One annotated lesion of an image: its mask and its patch class."""

    roi_id: str
    mask: np.ndarray  # bool (H, W)
    class_name: str


@dataclass(frozen=True)
class PatchSpec:
    """A sampled patch: centre (row y, column x) in image pixels and its class."""

    class_name: str
    y: int
    x: int
    roi_id: str = ""
    source: str = "random"  # centroid | roi | random | blob


@dataclass
class ImageSample:
    patches: list[PatchSpec] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def patch_class(abnormality: str, pathology: str) -> str:
    """CBIS-DDSM vocabulary -> one of the four lesion classes."""
    ab = str(abnormality).strip().lower()
    kind = "calc" if ab.startswith("calc") else "mass" if ab.startswith("mass") else None
    if kind is None:
        raise ValueError(f"unknown abnormality type {abnormality!r} (expected mass or calcification)")
    malignant = str(pathology).strip().upper().startswith("MALIGNANT")
    return f"{kind}_{'malignant' if malignant else 'benign'}"


# ---------------------------------------------------------------- geometry helpers


class BoxSum:
    """O(1) pixel counts of a boolean mask inside any square window (integral image)."""

    def __init__(self, mask: np.ndarray) -> None:
        self.shape = mask.shape
        self.table = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.int64)
        self.table[1:, 1:] = np.cumsum(np.cumsum(mask.astype(np.int64), axis=0), axis=1)
        self.total = int(self.table[-1, -1])

    def window(self, cy: int, cx: int, size: int) -> int:
        """Mask pixels inside the size x size patch centred at (cy, cx); outside the image counts 0."""
        r0, c0 = cy - size // 2, cx - size // 2
        r1, c1 = r0 + size, c0 + size
        r0, c0 = max(r0, 0), max(c0, 0)
        r1, c1 = min(r1, self.shape[0]), min(c1, self.shape[1])
        if r1 <= r0 or c1 <= c0:
            return 0
        t = self.table
        return int(t[r1, c1] - t[r0, c1] - t[r1, c0] + t[r0, c0])


def overlap_fractions(mask_sum: BoxSum, cy: int, cx: int, size: int) -> tuple[float, float]:
    """(intersection / roi_area, intersection / patch_area) for a patch centred at (cy, cx)."""
    inter = mask_sum.window(cy, cx, size)
    roi_frac = inter / mask_sum.total if mask_sum.total else 0.0
    return roi_frac, inter / float(size * size)


def overlaps(mask_sum: BoxSum, cy: int, cx: int, size: int, cutoff: float) -> bool:
    """The paper's either-or overlap test."""
    roi_frac, patch_frac = overlap_fractions(mask_sum, cy, cx, size)
    return roi_frac > cutoff or patch_frac > cutoff


def largest_component_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(row0, row1, col0, col1) inclusive bounds of the mask's largest connected component."""
    labels, n = ndimage.label(mask)
    if n == 0:
        raise ValueError("empty ROI mask")
    sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, n + 1))
    rows, cols = np.nonzero(labels == (int(np.argmax(sizes)) + 1))
    return int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())


def extract_patch(image: np.ndarray, cy: int, cx: int, size: int) -> np.ndarray:
    """size x size crop centred at (cy, cx), zero padded outside the image (the paper's margins)."""
    out = np.zeros((size, size), dtype=image.dtype)
    r0, c0 = cy - size // 2, cx - size // 2
    sr0, sc0 = max(r0, 0), max(c0, 0)
    sr1, sc1 = min(r0 + size, image.shape[0]), min(c0 + size, image.shape[1])
    if sr1 > sr0 and sc1 > sc0:
        out[sr0 - r0 : sr1 - r0, sc0 - c0 : sc1 - c0] = image[sr0:sr1, sc0:sc1]
    return out


# ---------------------------------------------------------------- samplers


def sample_positive_centres(
    mask: np.ndarray, count: int, settings: SamplingSettings, rng: np.random.Generator
) -> list[tuple[int, int, str]]:
    """Centres of positive patches for one ROI: centroid for S1, random-with-overlap otherwise."""
    if not mask.any():
        raise SamplingFailed("empty ROI mask")
    size = settings.patch_size
    if settings.centroid_only:
        cy, cx = ndimage.center_of_mass(mask)
        return [(int(round(cy)), int(round(cx)), "centroid")]
    mask_sum = BoxSum(mask)
    return draw_relaxed_centres(
        [], count, largest_component_box(mask), settings.pos_cutoff,
        lambda cy, cx, cutoff: overlaps(mask_sum, cy, cx, size, cutoff), settings, rng, "roi", "positive",
    )


def draw_relaxed_centres(
    centres: list[tuple[int, int, str]],
    count: int,
    box: tuple[int, int, int, int],
    threshold: float,
    accept: Callable[[int, int, float], bool],
    settings: SamplingSettings,
    rng: np.random.Generator,
    source: str,
    what: str,
) -> list[tuple[int, int, str]]:
    """Fill `centres` up to `count` with uniform draws inside `box` (row0, row1, col0, col1, inclusive)
    that `accept(cy, cx, threshold)`; every `relax_every` rejections the threshold is relaxed x0.95.

    SamplingFailed after `max_tries` draws.
    """
    r0, r1, c0, c1 = box
    failures, tries = 0, 0
    while len(centres) < count:
        if tries >= settings.max_tries:
            raise SamplingFailed(
                f"only {len(centres)}/{count} {what} patches after {tries} tries (threshold relaxed to {threshold:.3f})"
            )
        tries += 1
        cy, cx = int(rng.integers(r0, r1 + 1)), int(rng.integers(c0, c1 + 1))
        if accept(cy, cx, threshold):
            centres.append((cy, cx, source))
        else:
            failures += 1
            if failures % settings.relax_every == 0:
                threshold *= 0.95
    return centres


def blob_candidates(image: np.ndarray, breast: np.ndarray, patch_size: int) -> list[tuple[int, int]]:
    """Bright blob candidates (scale-normalised LoG local maxima inside the breast), in a fixed order.

    Deterministic and the costly part of sampling (the LoG filters): `build_patch_set` computes it
    for all images in worker processes ahead of the sequential, seeded draws."""
    img = image.astype(np.float32)
    peak = float(img.max())
    if peak <= 0:
        return []
    img /= peak
    sigmas = [s for s in (1.5, 3.0, 6.0, 12.0) if s <= patch_size / 4] or [1.5]
    found: list[tuple[int, int]] = []
    for sigma in sigmas:
        response = -(sigma**2) * ndimage.gaussian_laplace(img, sigma)
        inside = response[breast]
        if inside.size == 0:
            continue
        threshold = float(inside.mean() + 3.0 * inside.std())
        size = int(2 * round(2 * sigma) + 1)
        peaks = (response == ndimage.maximum_filter(response, size=size)) & (response > threshold) & breast
        rows, cols = np.nonzero(peaks)
        found.extend(zip(rows.tolist(), cols.tolist()))
    return found


def blob_centres(image: np.ndarray, breast: np.ndarray, patch_size: int, rng: np.random.Generator,
                 candidates: list[tuple[int, int]] | None = None) -> list[tuple[int, int]]:
    """`blob_candidates` (or the precomputed `candidates` of this image), shuffled by `rng`."""
    found = blob_candidates(image, breast, patch_size) if candidates is None else candidates
    order = rng.permutation(len(found))
    return [found[i] for i in order]


def _is_background(
    cy: int, cx: int, settings: SamplingSettings, tissue: BoxSum, lesions: Sequence[BoxSum], min_tissue: float
) -> bool:
    size = settings.patch_size
    if tissue.window(cy, cx, size) / float(size * size) < min_tissue:
        return False
    return not any(overlaps(m, cy, cx, size, settings.neg_cutoff) for m in lesions)


def sample_background_centres(
    image: np.ndarray,
    breast: np.ndarray,
    lesion_masks: Sequence[np.ndarray],
    count: int,
    settings: SamplingSettings,
    rng: np.random.Generator,
    blobs: list[tuple[int, int]] | None = None,
) -> list[tuple[int, int, str]]:
    """Background centres: enough breast tissue, no lesion of the image above the negative cutoff.
    `blobs`: this image's `blob_candidates`, when computed ahead."""
    if count <= 0:
        return []
    if not breast.any():
        raise SamplingFailed("no breast tissue found in the image")
    tissue = BoxSum(breast)
    lesions = [BoxSum(m) for m in lesion_masks if m.any()]
    centres: list[tuple[int, int, str]] = []
    if settings.blob_negatives > 0:
        quota = min(settings.blob_negatives, count)
        for cy, cx in blob_centres(image, breast, settings.patch_size, rng, blobs):
            if len(centres) >= quota:
                break
            if _is_background(cy, cx, settings, tissue, lesions, settings.min_tissue):
                centres.append((cy, cx, "blob"))
    rows, cols = np.nonzero(breast)
    box = int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())
    return draw_relaxed_centres(
        centres, count, box, settings.min_tissue,
        lambda cy, cx, min_tissue: _is_background(cy, cx, settings, tissue, lesions, min_tissue),
        settings, rng, "random", "background",
    )


def sample_image(
    image: np.ndarray, rois: Sequence[RoiInput], settings: SamplingSettings, rng: np.random.Generator,
    blobs: list[tuple[int, int]] | None = None,
) -> ImageSample:
    """All patches of one image; a lesion that cannot be sampled is reported, not fatal.
    `blobs`: the image's `blob_candidates` computed ahead (same result, see `build_patch_set`)."""
    out = ImageSample()
    for roi in rois:
        if roi.mask.shape != image.shape:
            out.problems.append(f"ROI {roi.roi_id}: mask shape {roi.mask.shape} != image shape {image.shape}")
            continue
        try:
            for cy, cx, source in sample_positive_centres(roi.mask, settings.per_roi, settings, rng):
                out.patches.append(PatchSpec(roi.class_name, cy, cx, roi.roi_id, source))
        except (SamplingFailed, ValueError) as exc:
            out.problems.append(f"ROI {roi.roi_id}: {exc}")
    breast = breast_mask(image, settings.tissue_threshold)
    masks = [r.mask for r in rois if r.mask.shape == image.shape]
    try:
        for cy, cx, source in sample_background_centres(
            image, breast, masks, settings.background_per_image, settings, rng, blobs
        ):
            out.patches.append(PatchSpec("background", cy, cx, "", source))
    except SamplingFailed as exc:
        out.problems.append(f"background: {exc}")
    return out
