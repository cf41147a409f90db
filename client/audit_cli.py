"""`mammo-client audit verify --data DIR [--state-dir DIR] [--head SHA256]`: check a site's audit chain
and print, per round, what left the site. Exit status 0 when the chain is intact, 1 when it is broken,
2 when there is no log to check."""

from __future__ import annotations

import argparse
from pathlib import Path

from mammo_fl.client.audit import AUDIT_FILE, read_lines
from mammo_fl.client.audit_verify import describe_entry, verify_chain
from mammo_fl.client.site import STATE_SUBDIR
from mammo_fl.common.utils.errors import ConfigError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mammo-client audit", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="action", required=True)
    v = sub.add_parser("verify", help="check the hash chain and print what left the site")
    v.add_argument("--data", required=True, type=Path, help="the site's data folder (as given to mammo-client)")
    v.add_argument("--state-dir", type=Path, default=None,
                   help=f"the site's state folder (default DATA/{STATE_SUBDIR})")
    v.add_argument("--head", default=None, metavar="SHA256",
                   help="a chain head recorded earlier (printed by verify): it must still be in the log")
    return p


def audit_main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if args.head is not None and len(args.head) != 64:
        raise ConfigError("--head must be a 64-character SHA-256 printed by an earlier verify")
    state_dir = args.state_dir or args.data / STATE_SUBDIR
    report = verify_chain(read_lines(state_dir), args.head)
    path = state_dir / AUDIT_FILE
    print(f"{path}: {len(report.entries)} chained entr{'y' if len(report.entries) == 1 else 'ies'}"
          + (f", {report.legacy} older unchained" if report.legacy else ""))
    for entry in report.entries:
        print(describe_entry(entry))
    if not report.intact:
        for problem in report.problems:
            print(f"BROKEN: {problem}")
        print(f"audit chain BROKEN ({len(report.problems)} problem(s)); the log was changed after it was written")
        return 1
    print(f"audit chain intact; head {report.head} (record it elsewhere: a later `verify --head` proves "
          "nothing up to here was changed)")
    return 0
