"""The private Flower names mammo-fl relies on exist in the installed release (fails loudly otherwise)."""

from __future__ import annotations

import flwr
import pytest

from mammo_fl.common.federation import flower_private
from mammo_fl.common.utils.errors import ConfigError


def test_installed_flower_is_the_pinned_release():
    assert flwr.__version__.startswith(flower_private.SUPPORTED_FLOWER), (
        f"flwr {flwr.__version__} installed; mammo-fl's private-name shims were checked on "
        f"{flower_private.SUPPORTED_FLOWER}x only (common/federation/flower_private.py)"
    )
    flower_private.check_flower_version()


@pytest.mark.parametrize(("module", "name"), flower_private.PRIVATE_NAMES)
def test_private_name_still_exists(module, name):
    assert flower_private.resolve(module, name) is not None


def test_another_flower_release_is_refused_in_one_line(monkeypatch):
    monkeypatch.setattr(flwr, "__version__", "1.43.0")
    with pytest.raises(ConfigError, match="needs flwr 1.42"):
        flower_private.check_flower_version()


def test_sqlite_busy_timeout_patch_changes_only_that_pragma(monkeypatch):
    import flwr.supercore.sql_mixin as sql_mixin

    before = dict(sql_mixin.SQLITE_PRAGMAS)
    monkeypatch.setattr(sql_mixin, "SQLITE_PRAGMAS", sql_mixin.SQLITE_PRAGMAS)
    flower_private.patch_sqlite_busy_timeout(1234)
    after = dict(sql_mixin.SQLITE_PRAGMAS)
    assert after["busy_timeout"] == "1234"
    assert {k: v for k, v in after.items() if k != "busy_timeout"} == {k: v for k, v in before.items() if k != "busy_timeout"}


def test_task_token_grace_patch_only_lengthens_it(monkeypatch):
    import flwr.supercore.corestate.in_memory_corestate as corestate

    monkeypatch.setattr(corestate, "HEARTBEAT_DEFAULT_INTERVAL", corestate.HEARTBEAT_DEFAULT_INTERVAL)
    flower_private.patch_task_token_grace(120)
    assert corestate.HEARTBEAT_DEFAULT_INTERVAL == 120
    flower_private.patch_task_token_grace(5)  # never shorter than Flower's own
    assert corestate.HEARTBEAT_DEFAULT_INTERVAL == 120


def test_superexec_starts_the_clientapp_by_the_name_the_launcher_shims():
    from mammo_fl.client.launcher import SHIM_NAME

    assert flower_private.clientapp_command() == SHIM_NAME
