"""What the coordinator sends each site, and what it gets back, on the wire (common/federation/wire.py).

The coordinator remembers which global model each node holds (the digest in the node's last
reply). A node that holds the previous global model gets only the published delta; one that
holds the current model gets nothing but the digest ("same", e.g. a retried round); any other
node (first round, a new or restarted SuperNode, after --resume) gets the full fp32 model.
A site's update comes back as a delta against the model it was sent; it is decoded to fp32
weights here, so screening and aggregation work on fp32 as before.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mammo_fl.common.federation import protocol as P
from mammo_fl.common.federation import wire as W


@dataclass
class Downlink:
    arrays: dict[str, np.ndarray]  # the global model as the sites reconstruct it
    exchanged: list[str]  # keys a round can change (trained layers, minus FedBN's BatchNorm)
    wire_dtype: str
    digest: str = ""
    previous: str = ""  # digest of the model `delta` applies to
    delta: W.Packed | None = None
    holds: dict[int, str] = field(default_factory=dict)
    _full: W.Packed | None = None

    def __post_init__(self) -> None:
        self.digest = W.arrays_digest(self.arrays)
        self.layout_all = W.Layout.of(self.arrays)
        self.layout = W.Layout.of(self.arrays, self.exchanged)

    def packed_for(self, node: int, force_full: bool = False) -> tuple[W.Packed, str]:
        """(what to send `node`, the digest of the model it is made against)."""
        held = self.holds.get(node)
        if not force_full and held == self.digest:
            return W.same(self.layout), self.digest
        if not force_full and self.delta is not None and held == self.previous:
            return self.delta, self.previous
        if self._full is None:
            self._full = W.pack_full(self.arrays, self.layout_all)
        return self._full, ""

    def contents(self, nodes: list[int], config: Any, force_full: bool = False) -> dict[int, Any]:
        """One RecordDict per node: packed arrays (unless "same"), how they are packed, the round config.

        `config` is the round's ConfigRecord, or a function node id -> ConfigRecord (each node is told
        the site its key is registered under). Nodes that get the same payload share one ArrayRecord,
        so Flower hashes and stores it once."""
        from flwr.app import ConfigRecord, RecordDict

        config_for = config if callable(config) else (lambda node: config)
        payloads: dict[str, tuple[Any, dict[str, Any], str]] = {}
        out = {}
        for n in nodes:
            packed, base = self.packed_for(n, force_full)
            if packed.mode not in payloads:
                payloads[packed.mode] = (*P.packed_to_records(packed), base)
            record, meta, base = payloads[packed.mode]
            content = RecordDict({P.WIRE: ConfigRecord({**meta, "base": base, "target": self.digest}),
                                  P.CONFIG: config_for(n)})
            if record is not None:
                content[P.ARRAYS] = record
            out[n] = content
        return out

    def decode_update(self, content: Any) -> dict[str, np.ndarray]:
        """A site's update -> its fp32 weights for the exchanged keys (decoded against the current model)."""
        meta = content.config_records.get(P.WIRE)
        if meta is None:
            raise W.WireError("reply has no wire description")
        packed = P.packed_from_records(content.array_records.get(P.ARRAYS), dict(meta))
        if packed.mode != W.DELTA:
            raise W.WireError(f"an update must be a delta, got {packed.mode!r}")
        return W.unpack(packed, self.layout, self.arrays)

    def publish(self, aggregated: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Adopt the new global model as the sites will reconstruct it; returns it (all keys)."""
        published, delta = W.publish(aggregated, self.arrays, self.layout, self.wire_dtype)
        self.arrays = {**self.arrays, **published}
        self.previous, self.delta, self._full = self.digest, delta, None
        self.digest = W.arrays_digest(self.arrays)
        return self.arrays

    def note(self, held: dict[int, str]) -> None:
        self.holds.update({n: d for n, d in held.items() if d})
