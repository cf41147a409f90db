"""Command-line entry points (`mammo-data`, `mammo-train`) and their shared runner."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from mammo_fl.common.utils.errors import MammoError


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Run a command's `main`, turning `MammoError` into a one-line message and exit status 2."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    prog = sys.argv[0].rsplit("/", 1)[-1] if sys.argv else "mammo"
    try:
        return int(main(argv) or 0)
    except MammoError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Output piped into `head` & co.: stop quietly, as Unix tools do.
        sys.stderr.close()
        return 0
