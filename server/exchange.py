"""Sending one kind of message to the sites and collecting replies, with bounded waits.

Flower's own helpers wait forever for nodes and poll replies every 3 s; here every wait has a
deadline, replies are polled every 0.25 s, and a site whose SuperNode left the federation
(graceful stop or missed heartbeats) is given up on at once instead of at the round timeout.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mammo_fl.common.utils.errors import MammoError

POLL_S = 0.25  # a pull is one cheap call to the SuperLink; replies are noticed sooner
NODE_CHECK_S = 2.0
LEFT_GRACE_S = 6.0  # absent this long from the online list = gone (a late heartbeat is not a departure)


class SitesUnavailable(MammoError):
    """Fewer sites than the minimum connected within the wait timeout."""


@dataclass
class Collected:
    replies: dict[int, Any] = field(default_factory=dict)  # node_id -> reply Message
    timed_out: list[int] = field(default_factory=list)  # no reply before the deadline
    left: list[int] = field(default_factory=list)  # node disconnected while we waited
    seconds: float = 0.0


def online_nodes(grid: Any) -> list[int]:
    return sorted(int(n) for n in grid.get_node_ids())


def wait_for_sites(
    grid: Any, min_sites: int, timeout_s: float, on_wait: Callable[[int], None] | None = None
) -> list[int]:
    """Node ids once at least `min_sites` are online; SitesUnavailable after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    last_count = -1
    while True:
        nodes = online_nodes(grid)
        if len(nodes) >= min_sites:
            return nodes
        if len(nodes) != last_count and on_wait is not None:
            on_wait(len(nodes))
        last_count = len(nodes)
        if time.monotonic() >= deadline:
            raise SitesUnavailable(
                f"only {len(nodes)} of the {min_sites} required sites connected within {timeout_s:.0f} s"
            )
        time.sleep(1.0)


def _content_for(content: Any, node: int) -> Any:
    if isinstance(content, dict):
        return content[node]
    return content(node) if callable(content) else content


def exchange(
    grid: Any,
    node_ids: list[int],
    message_type: str,
    content: Any,
    group_id: str,
    timeout_s: float,
) -> Collected:
    """Send `content` (one RecordDict for all, a dict node id -> RecordDict, or a function of the
    node id) to every node and collect replies until all answered, left, or timed out."""
    from flwr.app import Message

    start = time.monotonic()
    ttl = max(timeout_s + 60.0, 120.0)  # stale messages expire at sites that come back later
    messages = [Message(_content_for(content, int(n)), int(n), message_type, ttl=ttl, group_id=group_id)
                for n in node_ids]
    ids = list(grid.push_messages(messages))
    pending = {mid: int(n) for mid, n in zip(ids, node_ids, strict=True) if mid}
    out = Collected()
    out.timed_out = [int(n) for mid, n in zip(ids, node_ids, strict=True) if not mid]
    deadline = start + timeout_s
    next_node_check = start + NODE_CHECK_S
    absent_since: dict[int, float] = {}
    while pending:
        for reply in grid.pull_messages(list(pending)):
            node = pending.pop(reply.metadata.reply_to_message_id, None)
            if node is not None:
                out.replies[node] = reply
        if not pending:
            break
        now = time.monotonic()
        if now >= deadline:
            out.timed_out.extend(pending.values())
            break
        if now >= next_node_check:
            online = set(online_nodes(grid))
            for mid, node in list(pending.items()):
                if node in online:
                    absent_since.pop(node, None)
                elif now - absent_since.setdefault(node, now) >= LEFT_GRACE_S:
                    out.left.append(node)
                    del pending[mid]
            next_node_check = now + NODE_CHECK_S
        time.sleep(POLL_S)
    out.seconds = time.monotonic() - start
    return out
