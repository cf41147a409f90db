"""Dataset adapters: a dataset's own layout -> IndexTables (images / rois).

Each adapter module exposes `build_index(src, out_dir) -> IndexTables`; files that cannot
be used are listed in `IndexTables.skipped` as (path, reason) instead of stopping the run.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from mammo_fl.common.utils.errors import ConfigError
from mammo_fl.common.imaging.index import IndexTables

FORMATS = {"cbis-ddsm": "cbis_ddsm", "inbreast": "inbreast", "manifest": "manifest"}


def build_index(fmt: str, src: str | Path, out_dir: str | Path) -> IndexTables:
    """Run the adapter for `fmt` (cbis-ddsm | inbreast | manifest)."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown dataset format {fmt!r}; choose one of {', '.join(FORMATS)}")
    module = importlib.import_module(f"mammo_fl.common.imaging.adapters.{FORMATS[fmt]}")
    return module.build_index(Path(src), Path(out_dir))


def read_manifest(data_dir: str | Path):  # noqa: ANN201 - re-export for the federated client
    from mammo_fl.common.imaging.adapters.manifest import read_manifest as _read

    return _read(data_dir)
