"""Every private Flower name mammo-fl touches, in one place, pinned to flwr 1.42.x.

Flower 1.42 has no public hook for these needs:
- an in-process simulation whose ServerApp *and* ClientApps get the run config
  (`flwr.simulation.run_simulation._run_simulation`; the public `run_simulation()` passes an
  empty run config) and whose Ray start-up we time and shut down ourselves;
- a longer SQLite busy timeout for the SuperLink's state DB (`flwr.supercore.sql_mixin.SQLITE_PRAGMAS`):
  5 s is too short on a loaded coordinator and a site's reply is then lost with HTTP 500;
- the serialised size of a message (`flwr.supercore.inflatable...get_all_nested_objects`);
- site-pinned code: a site checks the app bundle (FAB) bytes before Flower unpacks or imports
  anything of it. `flwr-clientapp` (`flwr.supernode.cli.flwr_clientapp`) pulls the task with
  `run_clientapp.pull_task_input` and then calls `run_clientapp.install_from_fab(fab.content)`;
  the guard wraps both module globals, so a refusal raised before installation becomes Flower's
  own error reply to the coordinator (the message was already pulled);
- the FAB builder `flwr run` uses (`flwr.cli.build.build_fab_from_disk`), so a site computes the
  hash of the bundle its installed release ships;
- a longer task-token grace in the SuperNode (`flwr.supercore.corestate.in_memory_corestate.
  HEARTBEAT_DEFAULT_INTERVAL`, 30 s): a `flwr-clientapp` that has not sent its first heartbeat
  30 s after it was claimed loses its token, and on a loaded machine (measured: 31 s just to
  print `flwr-clientapp --help` at load average 95 on 2 cores) every try fails and the
  SuperExec relaunches it again and again;
- the per-message ClientApp process: SuperExec starts the command `TASK_TYPE_TO_COMMAND[CLIENT_APP]`
  (`flwr-clientapp`) by bare name through PATH, with `--runtime-api-address ... --token ...`, and its
  entry point is `flwr.supernode.cli.flwr_clientapp` (client/launcher.py runs that entry point,
  behind the app guard, in a pre-started process instead of a cold one).

pyproject pins flwr to 1.42.x; `check_flower_version()` refuses another release with one line, and
tests/test_flower_private.py fails loudly when a name below disappears.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from mammo_fl.common.utils.errors import ConfigError

SUPPORTED_FLOWER = "1.42."

# (module, attribute) of every private or internal name used below.
PRIVATE_NAMES: tuple[tuple[str, str], ...] = (
    ("flwr.simulation.run_simulation", "_run_simulation"),
    ("flwr.common.constant", "SUPERLINK_NODE_ID"),
    ("flwr.supercore.constant", "NOOP_FEDERATION_ID"),
    ("flwr.supercore.run", "Run"),
    ("flwr.supercore.task_identity", "TaskIdentity"),
    ("flwr.supercore.telemetry", "EventType"),
    ("flwr.supercore.sql_mixin", "SQLITE_PRAGMAS"),
    ("flwr.supercore.inflatable.inflatable_object", "get_all_nested_objects"),
    ("flwr.common.config", "get_fused_config_from_dir"),
    ("flwr.supernode.runtime.run_clientapp", "pull_task_input"),
    ("flwr.supernode.runtime.run_clientapp", "install_from_fab"),
    ("flwr.supernode.cli", "flwr_clientapp"),
    ("flwr.cli.build", "build_fab_from_disk"),
    ("flwr.supercore.corestate.in_memory_corestate", "HEARTBEAT_DEFAULT_INTERVAL"),
    ("flwr.supernode.cli", "flower_supernode"),
    ("flwr.supercore.constant", "TASK_TYPE_TO_COMMAND"),
)


def clientapp_command() -> str:
    """The command Flower's SuperExec runs for every ClientApp message (looked up through PATH)."""
    from flwr.supercore.constant import TaskType

    return str(resolve("flwr.supercore.constant", "TASK_TYPE_TO_COMMAND")[TaskType.CLIENT_APP])


def check_flower_version() -> None:
    """One-line refusal on a Flower release whose private names were not checked."""
    import flwr

    if not flwr.__version__.startswith(SUPPORTED_FLOWER):
        raise ConfigError(f"mammo-fl needs flwr {SUPPORTED_FLOWER}x (installed: {flwr.__version__})")


def resolve(module: str, name: str) -> Any:
    return getattr(importlib.import_module(module), name)


def patch_sqlite_busy_timeout(ms: int) -> None:
    """Make the SuperLink's SQLite writes wait `ms` for a lock instead of failing after 5 s."""
    sql_mixin = importlib.import_module("flwr.supercore.sql_mixin")
    sql_mixin.SQLITE_PRAGMAS = tuple(
        (name, str(ms)) if name == "busy_timeout" else (name, value) for name, value in sql_mixin.SQLITE_PRAGMAS
    )


def guard_app_bundles(check: Callable[[bytes, Any], None]) -> None:
    """In a `flwr-clientapp` process: call `check(fab_bytes, task)` before Flower installs a bundle.

    `task` has the pulled message, context, run and fab (attributes). `check` raising stops the
    task before any file of the bundle is written or imported; Flower then sends its error reply."""
    module = importlib.import_module("flwr.supernode.runtime.run_clientapp")
    pull, install = module.pull_task_input, module.install_from_fab
    task = SimpleNamespace(message=None, context=None, run=None, fab=None)

    def pull_task_input(client: Any) -> Any:
        task.message, task.context, task.run, task.fab = pull(client)
        return task.message, task.context, task.run, task.fab

    def install_from_fab(fab_file: Any, *args: Any, **kwargs: Any) -> Any:
        if not isinstance(fab_file, bytes):
            raise TypeError("the app guard checks bundle bytes only")
        check(fab_file, task)
        return install(fab_file, *args, **kwargs)

    module.pull_task_input = pull_task_input
    module.install_from_fab = install_from_fab


def run_flwr_clientapp() -> None:
    """Flower's own `flwr-clientapp` entry point (arguments from sys.argv)."""
    resolve("flwr.supernode.cli", "flwr_clientapp")()


def patch_task_token_grace(seconds: int) -> None:
    """In a SuperNode process: ClientApp tasks keep their token `seconds` before the first heartbeat
    (and 2 x `seconds` between heartbeats) instead of 30 s / 60 s."""
    module = importlib.import_module("flwr.supercore.corestate.in_memory_corestate")
    module.HEARTBEAT_DEFAULT_INTERVAL = max(int(module.HEARTBEAT_DEFAULT_INTERVAL), int(seconds))


def serialized_size(content: Any) -> int:
    """Bytes of a RecordDict as Flower sends it (all nested objects)."""
    nested = resolve("flwr.supercore.inflatable.inflatable_object", "get_all_nested_objects")
    return int(sum(len(obj.deflate()) for obj in nested(content).values()))


def fused_run_config(app_dir: Path, overrides: dict[str, Any]) -> dict[str, Any]:
    """The app's default run config with overrides; unknown keys are an error, as with `flwr run`."""
    try:
        return dict(resolve("flwr.common.config", "get_fused_config_from_dir")(app_dir, overrides))
    except ValueError as exc:
        raise ConfigError(f"run config for {app_dir}: {exc}") from None


def _random_id() -> int:
    return int.from_bytes(os.urandom(7), "big")


def run_simulation_in_process(
    *, num_supernodes: int, client_app: Any, server_app: Any, backend_config: dict[str, Any],
    app_dir: Path, run_config: dict[str, Any],
) -> None:
    """What the `flwr-simulation` process does for `flwr run` on a local federation, in this process.

    Node contexts get the app's fused run config plus `run_config`; the ServerApp gets the same.
    """
    from flwr.app import Context, RecordDict

    run_cls = resolve("flwr.supercore.run", "Run")
    task_identity = resolve("flwr.supercore.task_identity", "TaskIdentity")
    run = run_cls.create_empty(run_id=_random_id())
    run.primary_task_id = _random_id()
    run.federation_id = resolve("flwr.supercore.constant", "NOOP_FEDERATION_ID")
    run.override_config = dict(run_config)
    task_identity.task_id = 1
    task_identity.run_id = run.run_id
    task_identity.node_id = resolve("flwr.common.constant", "SUPERLINK_NODE_ID")
    fused = fused_run_config(app_dir, run_config)
    context = Context(run_id=run.run_id, node_id=0, node_config={}, state=RecordDict(), run_config=fused)
    resolve("flwr.simulation.run_simulation", "_run_simulation")(
        num_supernodes=num_supernodes,
        exit_event=resolve("flwr.supercore.telemetry", "EventType").PYTHON_API_RUN_SIMULATION_LEAVE,
        client_app=client_app,
        server_app=server_app,
        backend_name="ray",
        backend_config=backend_config,
        server_app_context=context,
        app_dir=str(app_dir),
        run=run,
        is_app=True,
    )
