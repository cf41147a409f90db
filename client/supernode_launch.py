"""Run Flower's own `flower-supernode` entry point with a longer task-token grace.

Flower 1.42 gives each `flwr-clientapp` process 30 s from launch to its first heartbeat; a
process that starts slower (a busy or memory-starved hospital machine) loses its token, fails,
and is launched again, which makes the machine slower still. 120 s (the only change) lets it
start; a ClientApp that dies is then noticed after 240 s instead of 60 s, well inside a round's
timeout. Arguments pass through unchanged, e.g. `python -m mammo_fl.client.supernode_launch --insecure ...`.
"""

from __future__ import annotations

import sys

from mammo_fl.common.federation.flower_private import check_flower_version, patch_task_token_grace, resolve

TASK_TOKEN_GRACE_S = 120


def main() -> None:
    check_flower_version()
    patch_task_token_grace(TASK_TOKEN_GRACE_S)
    sys.argv[0] = "flower-supernode"
    resolve("flwr.supernode.cli", "flower_supernode")()


if __name__ == "__main__":
    main()
