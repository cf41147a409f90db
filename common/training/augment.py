"""The paper's on-the-fly augmentation, on batched tensors with torch (fast; runs on the training device).

Flips (horizontal, vertical), rotation +/-25 deg, shear +/-0.2 rad, zoom 0.8-1.2 (each axis), and an
intensity shift +/-20 on the 0..255 scale, clipped to the image's own range (Keras behaviour). The
geometric part is ONE `affine_grid` + `grid_sample` call per batch; "nearest" fill = border padding.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F

from mammo_fl.common.utils.errors import ConfigError


@dataclass(frozen=True)
class AugmentSettings:
    rotation_deg: float = 25.0
    shear_rad: float = 0.2
    zoom_min: float = 0.8
    zoom_max: float = 1.2
    hflip: bool = True
    vflip: bool = True
    intensity_shift: float = 20.0

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> AugmentSettings:
        values = dict(values or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown augmentation setting(s) {', '.join(unknown)}; "
                              f"known: {', '.join(sorted(known))}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


NO_AUGMENT = AugmentSettings(0.0, 0.0, 1.0, 1.0, False, False, 0.0)


def _uniform(n: int, low: float, high: float, g: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=g, dtype=torch.float64)


def random_pixel_affines(n: int, settings: AugmentSettings, g: torch.Generator) -> torch.Tensor:
    """[n, 2, 2] matrices mapping output to input pixel offsets (from the image centre): R * Shear * Zoom * Flip."""
    rot = torch.deg2rad(_uniform(n, -settings.rotation_deg, settings.rotation_deg, g))
    shear = _uniform(n, -settings.shear_rad, settings.shear_rad, g)
    zx = _uniform(n, settings.zoom_min, settings.zoom_max, g)
    zy = _uniform(n, settings.zoom_min, settings.zoom_max, g)
    fx = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0) if settings.hflip else torch.ones(n)
    fy = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0) if settings.vflip else torch.ones(n)
    cos, sin = torch.cos(rot), torch.sin(rot)
    r = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    sh = torch.zeros(n, 2, 2, dtype=torch.float64)
    sh[:, 0, 0], sh[:, 0, 1], sh[:, 1, 1] = 1.0, -torch.sin(shear), torch.cos(shear)
    zf = torch.diag_embed(torch.stack([zx * fx.double(), zy * fy.double()], -1))
    return r @ sh @ zf


def pixel_to_theta(a: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pixel-space affines -> `affine_grid` thetas in normalised coords (keeps angles right on non-square images)."""
    d = torch.tensor([width / 2.0, height / 2.0], dtype=a.dtype)
    theta2 = a * d[None, None, :] / d[None, :, None]  # D^-1 A D
    return torch.cat([theta2, torch.zeros(a.shape[0], 2, 1, dtype=a.dtype)], dim=2)


def affine_grid(theta: torch.Tensor, n: int, height: int, width: int) -> torch.Tensor:
    """Same grid as `F.affine_grid(theta, (n, C, H, W), align_corners=False)`, built as (x-part [n, 1, W] +
    y-part [n, H, 1]) written straight into the grid's two planes: ~20x less CPU than F.affine_grid's
    batched matmul over the full base grid."""
    opts = {"device": theta.device, "dtype": theta.dtype}
    xs = (torch.arange(width, **opts) * 2 + 1) / width - 1
    ys = (torch.arange(height, **opts) * 2 + 1) / height - 1
    grid = torch.empty(n, height, width, 2, **opts)
    for k in range(2):  # k = 0: sampling x, k = 1: sampling y
        x_part = (theta[:, k, 0, None] * xs)[:, None, :]
        y_part = (theta[:, k, 1, None] * ys + theta[:, k, 2, None])[:, :, None]
        torch.add(x_part, y_part, out=grid[..., k])
    return grid


def _grey_channels(x: torch.Tensor) -> bool:
    """True when all channels are copies of the first (the paper's grey-to-3-channel input)."""
    return x.shape[1] > 1 and bool((x[:, 1:] == x[:, :1]).all())


def augment_batch(x: torch.Tensor, g: torch.Generator, settings: AugmentSettings = AugmentSettings(),
                  grey: bool | None = None) -> torch.Tensor:
    """Augment a float batch [N, C, H, W] (mean-subtracted 0..255 scale); parameters drawn from CPU generator `g`.

    Grey images copied to 3 channels are warped once and copied again (a third of the work); `grey=None`
    checks the channels, True/False asserts it (callers that know their data skip the check).
    """
    if x.ndim != 4:
        raise ValueError(f"augment_batch expects [N, C, H, W], got shape {tuple(x.shape)}")
    n, c, h, w = x.shape
    a = random_pixel_affines(n, settings, g)
    shift = _uniform(n, -settings.intensity_shift, settings.intensity_shift, g)
    grey = _grey_channels(x) if grey is None else (grey and x.shape[1] > 1)
    src = x[:, :1] if grey else x
    out = src
    if not torch.equal(a, torch.eye(2, dtype=a.dtype).expand_as(a)):
        theta = pixel_to_theta(a, h, w).to(device=x.device, dtype=x.dtype)
        out = F.grid_sample(src, affine_grid(theta, n, h, w), mode="bilinear", padding_mode="border",
                            align_corners=False)
    if settings.intensity_shift > 0:
        lo = src.amin(dim=(1, 2, 3), keepdim=True)
        hi = src.amax(dim=(1, 2, 3), keepdim=True)
        s = shift.to(device=x.device, dtype=x.dtype).view(n, 1, 1, 1)
        out = torch.clamp(out + s, lo, hi)
    if grey:
        out = out.expand(n, c, h, w).contiguous()
    return out


class BatchAugmenter:
    """Seeded callable applying `augment_batch` (one generator per run: reproducible sequences)."""

    def __init__(self, seed: int = 0, settings: AugmentSettings = AugmentSettings(), grey: bool | None = None) -> None:
        self.settings = settings
        self.grey = grey  # None: detect per batch; True: channels are known copies of one grey image
        self.generator = torch.Generator().manual_seed(int(seed))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return augment_batch(x, self.generator, self.settings, grey=self.grey)


def flip_views(x: torch.Tensor) -> list[torch.Tensor]:
    """The 4 flip views of the paper's augmented prediction: identity, horizontal, vertical, both."""
    return [x, torch.flip(x, dims=[-1]), torch.flip(x, dims=[-2]), torch.flip(x, dims=[-2, -1])]
