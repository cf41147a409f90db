"""`flwr-clientapp` with a gate in front: a site runs only the app bundles it approved.

The SuperNode starts a `flwr-clientapp` process by bare name through PATH for every message.
`mammo-client` puts a directory first on the SuperNode's PATH whose `flwr-clientapp` runs this
module: Flower's own `flwr-clientapp`, except that the bundle's bytes are hashed before Flower
unpacks them. A bundle whose SHA-256 is not approved by the site's policy (the installed
release's app by default, plus `approved-apps` from the site's config) is refused before any of
its files is written or imported: the refusal is appended to the site's audit log and client.log,
and Flower sends its own error reply, so the coordinator reports "site X refused app <hash>"
instead of waiting for a reply that never comes.
"""

from __future__ import annotations

import hashlib
import os
import stat
import sys
from pathlib import Path
from typing import Any

# Only light imports here: Flower's task token expires if the process does not send its first
# heartbeat within 30 s of being spawned, so the policy code loads inside `check_bundle`, after
# Flower has started its heartbeat.
from mammo_fl.common.federation.flower_private import (
    check_flower_version,
    guard_app_bundles,
    run_flwr_clientapp,
)

GUARD_NAME = "flwr-clientapp"
REFUSED = "refused-app"


class AppRefused(Exception):
    """The bundle is not on the site's approved list (its text travels in Flower's error reply)."""


def _site_name(node_config: dict[str, Any]) -> str:
    return str(node_config.get("site") or "unnamed-site")


def _record_refusal(node_config: dict[str, Any], task: Any, sha: str, reason: str) -> None:
    """Audit entry + client.log line at the site (the refusal stands regardless)."""
    from mammo_fl.client.audit import append_entry, refused_app_entry, utc_now

    state = node_config.get("state-dir")
    if not state:
        return
    message = task.message
    kind = str(message.metadata.message_type) if message is not None else "unknown"
    try:
        rnd = int(message.content.config_records["config"].get("server-round", 0)) if message is not None else 0
    except (KeyError, TypeError, ValueError, AttributeError):
        rnd = 0
    run_id = int(task.context.run_id) if task.context is not None else 0
    state_dir = Path(str(state))
    append_entry(state_dir, refused_app_entry(site=_site_name(node_config), run_id=run_id, rnd=rnd, kind=kind,
                                              reason=reason, app_sha256=sha, status=REFUSED))
    with open(state_dir / "client.log", "a", encoding="utf-8") as fh:
        fh.write(f"{utc_now()} refused app bundle {sha} (run {run_id}, {kind} round {rnd}): not on this "
                 "site's approved list (approved-apps in the site config)\n")


def check_bundle(fab: bytes, task: Any) -> None:
    """Raise AppRefused unless `fab` is approved; record which bundle runs otherwise."""
    from mammo_fl.client.audit import APP_SHA256_ENV
    from mammo_fl.client.policy import SitePolicy
    from mammo_fl.common.federation.app_bundle import installed_app_sha256

    node_config = dict(task.context.node_config) if task.context is not None else {}
    sha = hashlib.sha256(fab).hexdigest()
    declared = getattr(task.fab, "hash_str", sha)
    approved = SitePolicy.from_node_config(node_config).approved(installed_app_sha256())
    if sha not in approved or declared != sha:
        reason = f"site {_site_name(node_config)} refused app {sha}"
        _record_refusal(node_config, task, sha, reason)
        raise AppRefused(reason)
    os.environ[APP_SHA256_ENV] = sha


def preload_policy() -> None:
    """Load what `check_bundle` needs ahead of any task (the pre-started launcher, client/launcher.py)."""
    from mammo_fl.client import audit, policy  # noqa: F401 - imported for the forked tasks
    from mammo_fl.common.federation.app_bundle import installed_app_sha256

    installed_app_sha256()


def main() -> None:
    check_flower_version()
    guard_app_bundles(check_bundle)
    sys.argv[0] = GUARD_NAME  # Flower picks its exit messages by this name
    run_flwr_clientapp()


def write_guard(bin_dir: Path) -> Path:
    """BIN_DIR/flwr-clientapp: an executable that runs this guard with this Python (goes first on PATH)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    path = bin_dir / GUARD_NAME
    # The __main__ test matters: worker processes started with "spawn" (the preprocessing pool)
    # import the main script again and must not start another flwr-clientapp.
    script = (f"#!{sys.executable}\n"
              "# Written by mammo-client: the SuperNode finds this flwr-clientapp first on its PATH.\n"
              "from mammo_fl.client.app_guard import main\n"
              "if __name__ == \"__main__\":\n"
              "    main()\n")
    tmp = path.with_name(f".{GUARD_NAME}.tmp")
    tmp.write_text(script, encoding="utf-8")
    os.chmod(tmp, stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    os.replace(tmp, path)
    return path
