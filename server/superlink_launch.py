"""Run Flower's own `flower-superlink` entry point with a longer SQLite busy timeout.

Flower 1.42 opens its SQLite state with `busy_timeout=5000` ms. On a loaded coordinator
(several sites pushing replies at once, slow disk, busy CPUs) writes then fail with
"database is locked", the SuperLink answers HTTP 500 and the site's reply is lost for the
round. Raising the timeout (the only change) makes those writes wait instead. Arguments are
passed through unchanged, e.g. `python -m server.superlink_launch --insecure --database x.db`.
"""

from __future__ import annotations

import sys

BUSY_TIMEOUT_MS = 120_000


def patch_sqlite_busy_timeout(ms: int = BUSY_TIMEOUT_MS) -> None:
    import flwr.supercore.sql_mixin as sql_mixin

    sql_mixin.SQLITE_PRAGMAS = tuple(
        (name, str(ms)) if name == "busy_timeout" else (name, value) for name, value in sql_mixin.SQLITE_PRAGMAS
    )


def main() -> None:
    patch_sqlite_busy_timeout()
    from flwr.superlink.cli import flower_superlink

    sys.argv[0] = "flower-superlink"
    flower_superlink()


if __name__ == "__main__":
    main()
