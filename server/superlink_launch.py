"""Run Flower's own `flower-superlink` entry point with a longer SQLite busy timeout.

Flower 1.42 opens its SQLite state with `busy_timeout=5000` ms. On a loaded coordinator
(several sites pushing replies at once, slow disk, busy CPUs) writes then fail with
"database is locked", the SuperLink answers HTTP 500 and the site's reply is lost for the
round. Raising the timeout (the only change) makes those writes wait instead. Arguments are
passed through unchanged, e.g. `python -m mammo_fl.server.superlink_launch --insecure --database x.db`.
"""

from __future__ import annotations

import sys

from mammo_fl.common.federation.flower_private import check_flower_version, patch_sqlite_busy_timeout

BUSY_TIMEOUT_MS = 120_000


def main() -> None:
    check_flower_version()
    patch_sqlite_busy_timeout(BUSY_TIMEOUT_MS)
    from flwr.superlink.cli import flower_superlink

    sys.argv[0] = "flower-superlink"
    flower_superlink()


if __name__ == "__main__":
    main()
