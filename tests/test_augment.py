"""Batched augmentation: geometry is right on non-square images, flips exact, shift clipped, seeded."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from model_fixtures import one_torch_thread  # noqa: F401 (autouse fixture)

from mammo_fl.common.training.augment import (
    NO_AUGMENT,
    AugmentSettings,
    BatchAugmenter,
    affine_grid,
    augment_batch,
    flip_views,
    pixel_to_theta,
)
from mammo_fl.common.utils.errors import ConfigError


def _warp(x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    theta = pixel_to_theta(a, x.shape[-2], x.shape[-1]).to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def test_identity_settings_leave_images_unchanged() -> None:
    x = torch.randn(3, 3, 40, 30)
    assert torch.equal(augment_batch(x, torch.Generator().manual_seed(0), NO_AUGMENT), x)


def test_rotation_by_90_on_square_and_180_on_rectangular_images() -> None:
    x = torch.randn(1, 1, 16, 16)
    c, s = 0.0, 1.0
    a90 = torch.tensor([[[c, -s], [s, c]]], dtype=torch.float64)
    out = _warp(x, a90)
    assert torch.allclose(out, torch.rot90(x, 1, dims=(-2, -1)), atol=1e-5) or \
        torch.allclose(out, torch.rot90(x, -1, dims=(-2, -1)), atol=1e-5)
    # 180 deg on a non-square image = flip both axes (only true if pixel aspect is handled)
    r = torch.randn(1, 1, 20, 12)
    a180 = torch.tensor([[[math.cos(math.pi), -math.sin(math.pi)], [math.sin(math.pi), math.cos(math.pi)]]],
                        dtype=torch.float64)
    assert torch.allclose(_warp(r, a180), torch.flip(r, dims=(-2, -1)), atol=1e-5)


def test_random_flips_are_exact_flips() -> None:
    x = torch.randn(32, 3, 20, 14)
    out = augment_batch(x, torch.Generator().manual_seed(1), replace(NO_AUGMENT, hflip=True))
    flipped = 0
    for xi, oi in zip(x, out, strict=True):
        if torch.allclose(oi, torch.flip(xi, dims=[-1]), atol=1e-5):
            flipped += 1
        else:
            assert torch.allclose(oi, xi, atol=1e-5)
    assert 4 < flipped < 28


def test_intensity_shift_is_bounded_and_clipped_to_image_range() -> None:
    x = torch.rand(16, 3, 12, 12) * 100 - 50
    out = augment_batch(x, torch.Generator().manual_seed(2), replace(NO_AUGMENT, intensity_shift=20.0))
    diff = out - x
    assert diff.abs().max() <= 20 + 1e-4
    lo, hi = x.amin(dim=(1, 2, 3)), x.amax(dim=(1, 2, 3))
    assert (out.amin(dim=(1, 2, 3)) >= lo - 1e-5).all() and (out.amax(dim=(1, 2, 3)) <= hi + 1e-5).all()


def test_full_augmentation_is_seeded_and_keeps_shape_and_range() -> None:
    x = torch.randn(4, 3, 48, 36) * 30
    a = BatchAugmenter(seed=9)(x)
    b = BatchAugmenter(seed=9)(x)
    c = BatchAugmenter(seed=10)(x)
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    # border padding = "nearest" fill: no value outside the image's range (bilinear of in-range values)
    assert a.min() >= x.min() - 20 - 1e-3 and a.max() <= x.max() + 20 + 1e-3


def test_settings_from_dict_and_flip_views() -> None:
    assert AugmentSettings.from_dict({"rotation_deg": 10}).rotation_deg == 10
    with pytest.raises(ConfigError, match="rotaton"):
        AugmentSettings.from_dict({"rotaton_deg": 10})
    x = torch.arange(6.0).view(1, 1, 2, 3)
    views = flip_views(x)
    assert len(views) == 4 and torch.equal(views[3], torch.flip(x, dims=[-2, -1]))


def test_fast_affine_grid_equals_torch() -> None:
    theta = torch.randn(5, 2, 3, dtype=torch.float32)
    expected = F.affine_grid(theta, [5, 1, 30, 22], align_corners=False)
    torch.testing.assert_close(affine_grid(theta, 5, 30, 22), expected, atol=1e-6, rtol=0)


def test_grey_fast_path_equals_per_channel_warp() -> None:
    grey = torch.randn(4, 1, 40, 28) * 40
    x3 = grey.expand(4, 3, 40, 28).contiguous()
    out3 = augment_batch(x3, torch.Generator().manual_seed(4))
    out1 = augment_batch(grey, torch.Generator().manual_seed(4))
    assert torch.equal(out3, out1.expand(4, 3, 40, 28))
    # distinct channels take the general path and match the grey result channel by channel
    colour = torch.cat([grey, grey * 0.5, grey * 0.25], dim=1)
    outc = augment_batch(colour, torch.Generator().manual_seed(4), replace(AugmentSettings(), intensity_shift=0.0))
    ref = augment_batch(grey, torch.Generator().manual_seed(4), replace(AugmentSettings(), intensity_shift=0.0))
    torch.testing.assert_close(outc[:, :1], ref, atol=1e-4, rtol=1e-5)
