"""Shared pytest fixtures. Engineers only ADD fixtures here."""

from __future__ import annotations

import os

# Tests run on CPU with few threads: keep them deterministic and light.
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")


# --- engineer B: tiny synthetic datasets (common.synth), generated once per session ---
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def synth_inbreast(tmp_path_factory):
    """INbreast-layout synthetic dataset: 8 patients at 320x256 (root holds `INbreast Release 1.0/`)."""
    from synth_fixtures import tiny_dataset

    return tiny_dataset("inbreast", tmp_path_factory.mktemp("synth_inbreast"), patients=8, seed=11, prevalence=0.5)


@pytest.fixture(scope="session")
def synth_cbis(tmp_path_factory):
    """CBIS-DDSM-layout synthetic dataset (descriptive NBIA tree + four CSVs), 8 patients at 320x256."""
    from synth_fixtures import tiny_dataset

    return tiny_dataset("cbis-ddsm", tmp_path_factory.mktemp("synth_cbis"), patients=8, seed=12, prevalence=0.5)


@pytest.fixture(scope="session")
def synth_sites(tmp_path_factory):
    """Three hospital folders (site-1..site-3, each with manifest.csv and its own vendor), 9 patients."""
    from synth_fixtures import tiny_dataset

    return tiny_dataset("manifest", tmp_path_factory.mktemp("synth_sites"), patients=9, seed=13, sites=3,
                        prevalence=0.5)


@pytest.fixture()
def task_identity():
    """Real Messages need Flower's task context (set by flwr-serverapp / flwr-clientapp in production)."""
    from flwr.supercore.task_identity import TaskIdentity

    old = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = old
