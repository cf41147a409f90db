"""Acquisition domains and per-site vendor profiles.

A profile is everything that makes one scanner's images look unlike another's
(tone curve, noise, blur, bit depth, photometric interpretation, artefacts). The
federated simulations give every virtual hospital its own profile, so that the
domain shift between sites is real but never correlated with the label.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from mammo_fl.common.utils.errors import ConfigError


@dataclass(frozen=True)
class VendorProfile:
    """How one scanner (or film digitiser) turns projected tissue density into pixels."""

    name: str
    domain: str  # "film" | "ffdm"
    manufacturer: str
    model: str
    bits_stored: int  # 16 for digitised film, 12/14 for FFDM
    field_height_mm: float  # physical height of the image (sets PixelSpacing)
    aspect: float  # default width / height of the native image
    mono1_fraction: float  # share of files stored as MONOCHROME1 (FFDM only)
    attenuation: float  # k in exp(-k * density): global contrast of the beam
    tone_gamma: float  # FFDM display tone curve exponent / film H&D logistic slope (per log10 exposure)
    tone_offset: float  # shifts the tone curve (film: log-exposure speed point)
    noise: float  # quantum noise (FFDM) or film grain (film) amplitude
    blur_sigma_px: float  # detector / digitiser unsharpness at 1152-px height
    periphery_equalisation: float  # FFDM thickness equalisation strength (0..1)
    label_prob: float = 0.0  # film: probability of a bright patient label
    tape_prob: float = 0.0  # film: probability of a translucent tape strip
    edge_prob: float = 0.0  # film: probability of a bright unexposed film edge


PROFILES: dict[str, VendorProfile] = {
    p.name: p
    for p in (
        VendorProfile("howtek-film", "film", "HOWTEK", "MultiRad850", 16, 250.0, 0.62, 0.0,
                      3.0, 6.0, 0.0, 0.025, 0.9, 0.0, 0.55, 0.35, 0.3),
        VendorProfile("lumisys-film", "film", "LUMISYS", "Lumiscan 85", 16, 240.0, 0.60, 0.0,
                      2.7, 5.0, 0.08, 0.035, 1.1, 0.0, 0.5, 0.25, 0.4),
        VendorProfile("siemens-mammomat", "ffdm", "SIEMENS", "Mammomat Novation DR", 14, 286.0, 0.815, 0.2,
                      2.4, 0.85, 0.0, 0.012, 0.6, 0.35),
        VendorProfile("hologic-selenia", "ffdm", "HOLOGIC, Inc.", "Selenia Dimensions", 12, 233.0, 0.78, 0.0,
                      2.2, 1.05, 0.05, 0.015, 0.5, 0.5),
        VendorProfile("ge-senographe", "ffdm", "GE MEDICAL SYSTEMS", "Senographe Essential", 14, 240.0, 0.83, 0.5,
                      2.6, 0.75, -0.05, 0.010, 0.8, 0.6),
        VendorProfile("fuji-amulet", "ffdm", "FUJIFILM Corporation", "FDR-3000AWS", 12, 240.0, 0.80, 1.0,
                      2.0, 1.2, 0.1, 0.018, 0.7, 0.25),
        VendorProfile("philips-microdose", "ffdm", "Philips Medical Systems", "MicroDose SI", 14, 260.0, 0.76, 0.0,
                      2.8, 0.95, -0.1, 0.022, 1.0, 0.45),
    )
}

DEFAULT_PROFILE = {"film": "howtek-film", "ffdm": "siemens-mammomat"}
# Order in which virtual hospitals get a vendor (FFDM sites first, film digitisers as later sites).
SITE_ROTATION = {
    "ffdm": ("hologic-selenia", "ge-senographe", "siemens-mammomat", "fuji-amulet", "philips-microdose"),
    "film": ("howtek-film", "lumisys-film"),
    "mixed": ("hologic-selenia", "ge-senographe", "siemens-mammomat", "howtek-film", "fuji-amulet",
              "philips-microdose", "lumisys-film"),
}


def get_profile(name: str) -> VendorProfile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ConfigError(f"unknown vendor profile {name!r}; known: {', '.join(PROFILES)}") from None


def site_profile(site_index: int, domain: str, seed: int) -> VendorProfile:
    """Vendor profile of virtual hospital `site_index` (0-based).

    Sites beyond the base rotation reuse a vendor with jittered settings (a second
    hospital with the same brand still differs in calibration and processing).
    """
    rotation = SITE_ROTATION[domain]
    base = PROFILES[rotation[site_index % len(rotation)]]
    cycle = site_index // len(rotation)
    if cycle == 0:
        return base
    rng = np.random.default_rng([seed, 7919, site_index])
    return replace(
        base,
        name=f"{base.name}-{cycle + 1}",
        attenuation=base.attenuation * float(rng.uniform(0.85, 1.15)),
        tone_gamma=base.tone_gamma * float(rng.uniform(0.85, 1.15)),
        tone_offset=base.tone_offset + float(rng.uniform(-0.1, 0.1)),
        noise=base.noise * float(rng.uniform(0.7, 1.4)),
        blur_sigma_px=base.blur_sigma_px * float(rng.uniform(0.8, 1.3)),
    )
