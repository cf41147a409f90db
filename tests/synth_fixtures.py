"""Tiny synthetic datasets (engineer B) for any test that needs realistic DICOM trees.

Import from test modules (`from synth_fixtures import TINY_SIZE, tiny_dataset`) or use the
session fixtures `synth_inbreast`, `synth_cbis`, `synth_sites` from tests/conftest.py.
Images are 320x256: small, yet above common.dicom.MIN_SIDE (200) so `read_dicom` accepts
them without lowering `min_side`.
"""

from __future__ import annotations

from pathlib import Path

TINY_SIZE = (320, 256)


def tiny_dataset(layout: str, out_dir: Path, patients: int = 6, seed: int = 0, **kwargs) -> Path:
    from mammo_fl.common.synth import generate_dataset

    kwargs.setdefault("size", TINY_SIZE)
    kwargs.setdefault("workers", 1)
    return generate_dataset(layout, out_dir, patients, seed, **kwargs)
