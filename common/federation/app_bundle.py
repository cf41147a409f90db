"""The Flower app bundle (FAB) this release ships, and its SHA-256: what a site approves.

`flwr run` packs server/flower_app into a FAB with Flower's own builder (fixed file dates,
sorted entries, an explicit `fab-include` list in its pyproject), so the bundle is the same
bytes wherever the same mammo-fl release is installed. A site computes the hash from its own
installed copy (`installed_app_sha256`) and approves it by default; the coordinator prints the
hash it ships, so a mismatch is visible on both sides.
"""

from __future__ import annotations

import hashlib
import importlib
from functools import cache
from pathlib import Path

from mammo_fl.common.federation.flower_private import resolve

# The Flower app directory inside the installed package (server/flower_app).
APP_DIR = Path(str(importlib.import_module("mammo_fl.server").__file__)).resolve().parent / "flower_app"


def build_app_bundle(app_dir: Path = APP_DIR) -> bytes:
    """The FAB bytes exactly as `flwr run` builds them from `app_dir`."""
    return resolve("flwr.cli.build", "build_fab_from_disk")(app_dir)


def bundle_sha256(fab: bytes) -> str:
    return hashlib.sha256(fab).hexdigest()


@cache
def installed_app_sha256() -> str:
    """SHA-256 of the app bundle of the installed mammo-fl release."""
    return bundle_sha256(build_app_bundle(APP_DIR))
