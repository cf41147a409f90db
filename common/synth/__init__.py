"""Synthetic mammograms as DICOM in the CBIS-DDSM, INbreast and hospital-manifest layouts.

Public API:
- `generate_dataset(layout, out_dir, patients, seed, domain=..., sites=..., size=(H, W), prevalence=...,
  conspicuity=..., ...) -> Path`
- `SynthConfig` / `generate(config)`; `plan(config)` (the image list without writing anything)
- `render_image(spec)` (pixels + ROIs in memory), `render_preview(dataset_dir, out_png)`
- `PROFILES` / `get_profile(name)` (vendor profiles), `site_profile(i, domain, seed)`
"""

from mammo_fl.common.synth.generate import SynthConfig, generate, generate_dataset, plan
from mammo_fl.common.synth.profiles import PROFILES, VendorProfile, get_profile, site_profile
from mammo_fl.common.synth.render import ImageSpec, RenderedImage, render_image

__all__ = [
    "PROFILES", "ImageSpec", "RenderedImage", "SynthConfig", "VendorProfile", "generate", "generate_dataset",
    "get_profile", "plan", "render_image", "site_profile",
]
