"""S1 / S10 patch sets: sampling (`sampling.py`) and the patch-set writer / reader (`patch_set.py`)."""

from mammo_fl.common.models.checkpoint import PATCH_CLASSES
from mammo_fl.common.pipeline.patches.patch_set import (
    PATCH_COLUMNS,
    PATCH_CSV,
    PATCH_META,
    PatchSetReport,
    build_patch_set,
    load_patch_set,
)
from mammo_fl.common.pipeline.patches.sampling import (
    BoxSum,
    ImageSample,
    PatchSpec,
    RoiInput,
    SamplingFailed,
    SamplingSettings,
    blob_centres,
    extract_patch,
    largest_component_box,
    overlap_fractions,
    overlaps,
    patch_class,
    sample_background_centres,
    sample_image,
    sample_positive_centres,
)

__all__ = [
    "PATCH_CLASSES", "PATCH_COLUMNS", "PATCH_CSV", "PATCH_META", "BoxSum", "ImageSample", "PatchSetReport",
    "PatchSpec", "RoiInput", "SamplingFailed", "SamplingSettings", "blob_centres", "build_patch_set",
    "extract_patch", "largest_component_box", "load_patch_set", "overlap_fractions", "overlaps", "patch_class",
    "sample_background_centres", "sample_image", "sample_positive_centres",
]
