"""The site worker: one long-lived process per site, started and supervised by `mammo-client`.

Flower starts a fresh `flwr-clientapp` process for every message; everything expensive lives
here instead, once: the torch import, the site's prepared and preloaded images, the built model
and the global model the site holds. The per-message process hands over the packed arrays and
gets the reply arrays back over a Unix socket in the site's state dir (client/channel.py).

The worker dies with mammo-client (PR_SET_PDEATHSIG, set by the supervisor, plus a parent check
here) and is restarted by it when it fails; it never serves the network.

    python -m mammo_fl.client.worker --socket STATE/worker.sock --state-dir STATE
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from mammo_fl.client.channel import ChannelError, listen, peer_is_same_user, receive, send, serve_main

PARENT_CHECK_S = 2.0


def warm_up() -> None:
    """Import what every message needs, before the first one arrives."""
    import torch  # noqa: F401

    import mammo_fl.client.app  # noqa: F401 - public_reason / log_locally
    import mammo_fl.common.evaluation.inference  # noqa: F401
    import mammo_fl.common.imaging.cache  # noqa: F401
    import mammo_fl.common.models  # noqa: F401
    import mammo_fl.common.training.finetune  # noqa: F401


def serve(path: Path, parent: int) -> None:
    # listen before the (slow) warm-up: a message that arrives meanwhile waits in the backlog instead of
    # finding no worker and doing the work in the ClientApp process
    server = listen(path)
    warm_up()
    from mammo_fl.client.site_work import run_request

    server.settimeout(PARENT_CHECK_S)
    print(f"site worker {os.getpid()} listening on {path}", flush=True)
    try:
        while True:
            if parent and os.getppid() != parent:
                return  # mammo-client is gone
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            sess = None
            with conn:
                conn.settimeout(None)
                if not peer_is_same_user(conn):
                    continue
                try:
                    header, arrays = receive(conn)
                except (ChannelError, OSError, ValueError):
                    continue  # a broken request; the ClientApp process reports its own failure
                if header.get("kind") == "ping":
                    send(conn, {"status": "ok", "pid": os.getpid()})
                    continue
                t0 = time.perf_counter()
                out, out_arrays, sess = run_request(header, arrays, persist=False)
                out.setdefault("timings", {})["worker"] = time.perf_counter() - t0
                try:
                    send(conn, out, out_arrays)
                except OSError:
                    pass  # the ClientApp process went away (its round was cancelled)
            if sess is not None:
                sess.persist()  # after answering: keeps the disk write off the round's critical path
    finally:
        server.close()
        path.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    return serve_main("mammo-fl site worker", __doc__.splitlines()[0], serve, argv)


if __name__ == "__main__":
    sys.exit(main())
