"""Minimal Flower Message-API app: per round the server sends the model's arrays to every site
with Flower's own `send_and_receive` and the site echoes them back untouched. Its round time is
raw Flower's per-round overhead for that payload (bench_federation.py)."""

from __future__ import annotations

import json
import time

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

server = ServerApp()
client = ClientApp()


@client.train()
def echo(msg: Message, context: Context) -> Message:
    arrays = msg.content.array_records["arrays"]
    return Message(RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": 1})}), reply_to=msg)


@server.main()
def main(grid: Grid, context: Context) -> None:
    import torch

    cfg = context.run_config
    state = torch.load(str(cfg["model"]), map_location="cpu", weights_only=True)["state_dict"]
    arrays = ArrayRecord(state)
    need = int(cfg["min-sites"])
    while len(list(grid.get_node_ids())) < need:
        time.sleep(0.5)
    rounds = []
    for rnd in range(1, int(cfg["rounds"]) + 1):
        nodes = list(grid.get_node_ids())
        content = RecordDict({"arrays": arrays, "config": ConfigRecord({"server-round": rnd})})
        msgs = [Message(content, n, MessageType.TRAIN, group_id=str(rnd)) for n in nodes]
        t0 = time.monotonic()
        replies = list(grid.send_and_receive(msgs, timeout=600))
        rounds.append({"round": rnd, "seconds": time.monotonic() - t0, "sites": len(nodes),
                       "ok": sum(not r.has_error() for r in replies)})
    with open(str(cfg["out"]), "w", encoding="utf-8") as fh:
        json.dump(rounds, fh)
