"""Per-site events for the live coordinator page: which node is which site and what it last did.

The round loop already records rejected and missing sites; these add the accepted replies
(`site_reply`: round, kind, node, site name, examples), so RUNDIR/events.jsonl tells, for every
site, its node id, when it was last heard from, and how many examples it trained or validated on.
"""

from __future__ import annotations

from mammo_fl.server.rundir import RunDir
from mammo_fl.server.validate import Screened


def report_replies(rundir: RunDir, rnd: int, kind: str, accepted: list[Screened]) -> None:
    for rep in accepted:
        extra = {"positives": int(rep.metrics["num-pos"])} if "num-pos" in rep.metrics else {}
        rundir.event("site_reply", round=rnd, kind=kind, node=rep.node, site=rep.site,
                     examples=int(rep.metrics.get("num-examples", 0)), **extra)
