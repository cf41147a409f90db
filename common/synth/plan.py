"""Dataset plans: who the patients are, which images they have, and what each image shows.

Planning is cheap and fully determined by the seed; rendering each image then uses
its own seed (seed, image index), so any worker can render any image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mammo_fl.common.synth.lesions import CALC_MORPHOLOGIES, MASS_MORPHOLOGIES, LesionSpec
from mammo_fl.common.synth.profiles import VendorProfile
from mammo_fl.common.synth.render import ImageSpec

DENSITY_P = (0.1, 0.4, 0.4, 0.1)  # ACR 1..4, independent of the label
VIEWS = ("CC", "MLO")


@dataclass(frozen=True)
class PlanOptions:
    height: int
    width: int
    seed: int
    prevalence: float  # layout-specific meaning, see each planner
    lesion_scale: float = 1.0  # multiplies lesion sizes


def sample_lesion(kind: str, pathology: str, rng: np.random.Generator, lesion_scale: float = 1.0) -> LesionSpec:
    """Size and contrast come from the same distributions for benign and malignant lesions."""
    malignant = pathology == "MALIGNANT"
    if kind == "mass":
        morph = str(rng.choice(MASS_MORPHOLOGIES["MALIGNANT" if malignant else "BENIGN"], p=(0.55, 0.45)))
        size = rng.uniform(0.08, 0.2) * (0.8 if morph == "spiculated" else 1.0)  # spicules add reach
        contrast = rng.uniform(0.16, 0.26)  # 0.06-0.16 denser than gland
    else:
        options = CALC_MORPHOLOGIES["MALIGNANT" if malignant else "BENIGN"]
        morph = str(rng.choice(options))
        size = rng.uniform(0.05, 0.1)
        contrast = rng.uniform(0.35, 0.6)
    return LesionSpec(kind, pathology, morph, float(size * lesion_scale), float(contrast), int(rng.integers(2**31)))


def _image_views(rng: np.random.Generator, p_four: float) -> list[tuple[str, str]]:
    """(laterality, view) pairs of one patient: four views, or two views of one breast."""
    if rng.random() < p_four:
        return [(lat, v) for lat in ("R", "L") for v in VIEWS]
    lat = "R" if rng.random() < 0.5 else "L"
    return [(lat, v) for v in VIEWS]


def deal_vendors(roles: Sequence[str], n_vendors: int, seed: int) -> list[int]:
    """Vendor index of each patient, dealt round-robin within each role (positive, BI-RADS 3, negative).

    Every vendor gets the same share of each role (+-1), so the label says nothing about the
    scanner. Drawn from its own stream: the cohort itself is the same as with one vendor.
    """
    rng = np.random.default_rng([seed, 5])
    out = [0] * len(roles)
    offset = int(rng.integers(n_vendors))
    for role in sorted(set(roles)):
        members = [i for i, r in enumerate(roles) if r == role]
        for j, i in enumerate(rng.permutation(members)):
            out[int(i)] = (offset + j) % n_vendors
        offset = (offset + len(members)) % n_vendors  # the next role starts where this one stopped
    return out


def plan_inbreast(n_patients: int, opts: PlanOptions, profile: VendorProfile,
                  vendors: Sequence[tuple[VendorProfile, tuple[int, int]]] = ()) -> list[ImageSpec]:
    """INbreast-like cohort: ~78% four-view patients, ~30% positive patients, ~10% BI-RADS 3.

    `prevalence` is the share of patients with a malignant (BI-RADS 4-6) breast. Negative
    breasts are BI-RADS 1 (nothing) or 2 (benign lesions), so 'has a lesion' is no cue.
    `vendors` ((profile, (height, width)) pairs): a multi-vendor cohort, each patient imaged by
    one of them (dealt by `deal_vendors`, label-balanced); empty = every image from `profile`.
    """
    rng = np.random.default_rng([opts.seed, 1])
    images: list[ImageSpec] = []
    used_ids: set[int] = set()
    n_b3 = int(round(n_patients * 12 / 115))
    n_pos = int(round(n_patients * opts.prevalence))
    roles = ["pos"] * n_pos + ["b3"] * n_b3 + ["neg"] * max(n_patients - n_pos - n_b3, 0)
    roles = list(rng.permutation(roles))[:n_patients]
    vendor_of = deal_vendors([str(r) for r in roles], len(vendors), opts.seed) if vendors else []
    for p, role in enumerate(roles):
        patient_hash = "".join(rng.choice(list("0123456789abcdef"), 16))
        views = _image_views(rng, 0.78)
        sides = sorted({lat for lat, _ in views})
        special_side = str(rng.choice(sides))
        acq_date = f"20{rng.integers(8, 11):02d}{rng.integers(1, 13):02d}"
        density = int(rng.choice([1, 2, 3, 4], p=DENSITY_P))
        breast: dict[str, tuple[str, int, tuple[LesionSpec, ...]]] = {}
        for side in sides:
            if role == "pos" and side == special_side:
                kind = "mass" if rng.random() < 0.55 else "calcification"
                lesions = (sample_lesion(kind, "MALIGNANT", rng, opts.lesion_scale),)
                if rng.random() < 0.15:  # a benign finding next to the cancer
                    lesions += (sample_lesion("calcification", "BENIGN", rng, opts.lesion_scale),)
                birads = str(rng.choice(["4a", "4b", "4c", "5", "6"], p=(0.15, 0.15, 0.2, 0.35, 0.15)))
                breast[side] = (birads, 1, lesions)
            elif role == "b3" and side == special_side:
                kind = "mass" if rng.random() < 0.5 else "calcification"
                breast[side] = ("3", 0, (sample_lesion(kind, "BENIGN", rng, opts.lesion_scale),))
            elif rng.random() < 0.6:  # BI-RADS 2: benign findings (common in INbreast)
                kind = "mass" if rng.random() < 0.5 else "calcification"
                breast[side] = ("2", 0, (sample_lesion(kind, "BENIGN", rng, opts.lesion_scale),))
            else:
                breast[side] = ("1", 0, ())
        scanner, (height, width) = vendors[vendor_of[p]] if vendors else (profile, (opts.height, opts.width))
        for lat, view in views:
            birads, label, lesions = breast[lat]
            file_id = int(rng.integers(20_000_000, 54_000_000))
            while file_id in used_ids:
                file_id = int(rng.integers(20_000_000, 54_000_000))
            used_ids.add(file_id)
            images.append(ImageSpec(
                index=len(images), image_id=str(file_id), patient_id=patient_hash, laterality=lat, view=view,
                density=density, birads=birads, label=label, lesions=lesions, profile=scanner,
                height=height, width=width, seed=opts.seed,
                extra={"acquisition_date": acq_date, "patient_index": p},
            ))
    return images


CBIS_PATHOLOGY_BENIGN = ("BENIGN", "BENIGN_WITHOUT_CALLBACK")


def plan_cbis(n_patients: int, opts: PlanOptions, profile: VendorProfile, test_fraction: float = 0.2) -> list[ImageSpec]:
    """CBIS-DDSM-like cohort: every image has >= 1 abnormality; label = any malignant.

    `prevalence` is the share of malignant abnormalities (CBIS-DDSM: ~41%). Patients have
    one abnormal breast (CC + MLO, sometimes one view), occasionally both breasts.
    """
    rng = np.random.default_rng([opts.seed, 2])
    images: list[ImageSpec] = []
    for p in range(n_patients):
        patient_id = f"P_{p + 1:05d}"
        split = "Test" if rng.random() < test_fraction else "Training"
        density = int(rng.choice([1, 2, 3, 4], p=DENSITY_P))
        n_breasts = 2 if rng.random() < 0.08 else 1
        sides = list(rng.permutation(["LEFT", "RIGHT"]))[:n_breasts]
        for side in sides:
            kind = "mass" if rng.random() < 0.52 else "calcification"
            n_lesions = 1 if rng.random() < 0.85 else 2
            lesions: list[LesionSpec] = []
            for j in range(n_lesions):
                k = kind if j == 0 or rng.random() < 0.6 else ("calcification" if kind == "mass" else "mass")
                malignant = rng.random() < opts.prevalence
                pathology = "MALIGNANT" if malignant else str(rng.choice(CBIS_PATHOLOGY_BENIGN, p=(0.7, 0.3)))
                lesions.append(sample_lesion(k, pathology, rng, opts.lesion_scale))
            views = list(VIEWS) if rng.random() < 0.9 else [str(rng.choice(VIEWS))]
            label = int(any(les.malignant for les in lesions))
            for view in views:
                images.append(ImageSpec(
                    index=len(images), image_id=f"{patient_id}_{side}_{view}", patient_id=patient_id,
                    laterality=side[0], view=view, density=density,
                    birads=str(int(rng.integers(4, 6)) if label else int(rng.choice([2, 3, 4]))),
                    label=label, lesions=tuple(lesions), profile=profile, height=opts.height, width=opts.width,
                    seed=opts.seed, extra={"split": split, "side": side,
                                           "subtlety": [int(rng.integers(1, 6)) for _ in lesions]},
                ))
    return images


def plan_site(
    site: str, n_patients: int, opts: PlanOptions, profile: VendorProfile, start_index: int, stream: int
) -> list[ImageSpec]:
    """One hospital's screening-like cohort (manifest layout): four views, label per image.

    `prevalence` is the share of patients with a malignant breast; negative breasts carry
    benign findings 40% of the time.
    """
    rng = np.random.default_rng([opts.seed, 3, stream])
    images: list[ImageSpec] = []
    n_pos = int(round(n_patients * opts.prevalence))
    roles = list(rng.permutation([1] * n_pos + [0] * (n_patients - n_pos)))
    for p, positive in enumerate(roles):
        patient_id = f"{site}-{p + 1:05d}"
        density = int(rng.choice([1, 2, 3, 4], p=DENSITY_P))
        views = _image_views(rng, 0.9)
        sides = sorted({lat for lat, _ in views})
        cancer_side = str(rng.choice(sides))
        breast = {}
        for side in sides:
            if positive and side == cancer_side:
                kind = "mass" if rng.random() < 0.55 else "calcification"
                breast[side] = (1, "5", (sample_lesion(kind, "MALIGNANT", rng, opts.lesion_scale),))
            elif rng.random() < 0.4:
                kind = "mass" if rng.random() < 0.5 else "calcification"
                breast[side] = (0, "2", (sample_lesion(kind, "BENIGN", rng, opts.lesion_scale),))
            else:
                breast[side] = (0, "1", ())
        for lat, view in views:
            label, birads, lesions = breast[lat]
            idx = start_index + len(images)
            images.append(ImageSpec(
                index=idx, image_id=f"{site}-img{len(images) + 1:05d}", patient_id=patient_id, laterality=lat,
                view=view, density=density, birads=birads, label=label, lesions=lesions, profile=profile,
                height=opts.height, width=opts.width, seed=opts.seed, site=site,
            ))
    return images
