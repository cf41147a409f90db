"""Shared pytest fixtures. Engineers only ADD fixtures here."""

from __future__ import annotations

import os

# Tests run on CPU with few threads: keep them deterministic and light.
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
