"""Writing a round's results off the round's critical path.

Each round's commit (checkpoint -> strategy state -> metrics/plot -> state.json, server/rundir.py's
protocol) runs in one background thread, rounds strictly in order, while the next round's messages
are out at the sites: the coordinator does not wait for a 100 MB checkpoint and a plot before it
sends. The resume protocol is unchanged: state.json is still written last, after its checkpoint, so
a coordinator killed mid-commit resumes from the previous round. A failed commit fails the run at
the next submit or wait.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any


class Committer:
    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="commit")
        self._pending: list[Future] = []

    def _raise_failed(self) -> None:
        for fut in [f for f in self._pending if f.done()]:
            self._pending.remove(fut)
            fut.result()  # re-raises the commit's exception

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        self._raise_failed()
        self._pending.append(self._pool.submit(fn, *args))

    def wait(self) -> None:
        """Until every submitted commit is on disk (raises the first failure)."""
        try:
            for fut in self._pending:
                fut.result()
        finally:
            self._pending.clear()

    def close(self) -> None:
        self._pool.shutdown(wait=True)
