"""Real Flower reply messages for the safeguard tests (screening, DP, audit); Flower's task context
comes from the `task_identity` fixture in conftest.py."""

from __future__ import annotations

import numpy as np

from mammo_fl.common.federation import protocol as P


def train_reply(site: str, arrays: dict[str, np.ndarray], num_examples: int = 10, wire: str = "fp32"):
    """A site's training reply as it travels (issue 18): the delta of `arrays` against GLOBAL, packed."""
    from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

    from mammo_fl.common.federation import wire as W

    record, meta = P.packed_to_records(W.pack_delta(arrays, GLOBAL, W.Layout.of(GLOBAL), wire))
    content = RecordDict({
        P.ARRAYS: record,
        P.WIRE: ConfigRecord(meta),
        P.METRICS: MetricRecord({"num-examples": num_examples, "train-loss": 0.5, "train-seconds": 1.0}),
        P.SITE: ConfigRecord({"site": site, "status": P.STATUS_OK}),
    })
    return Message(content, 1, "train")


def screen_train(replies: dict) -> tuple[list, list]:
    """The coordinator's screening of training replies: (accepted, rejected), updates decoded against GLOBAL."""
    from mammo_fl.server.downlink import Downlink
    from mammo_fl.server.validate import expected_specs, screen

    down = Downlink(GLOBAL, sorted(GLOBAL), "fp32")
    got = screen(replies, train=True, evaluate=False, expected=expected_specs(GLOBAL, sorted(GLOBAL)),
                 decode=down.decode_update)
    return got.train, got.rejected_train


def screen_eval(replies: dict) -> tuple[list, list]:
    """The coordinator's screening of the evaluations in replies: (accepted, rejected)."""
    from mammo_fl.server.validate import screen

    got = screen(replies, train=False, evaluate=True)
    return got.evals, got.rejected_eval


def eval_reply(site: str, neg: list, pos: list, num_examples: int | None = None, num_pos: int | None = None):
    from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

    metrics = {
        "num-examples": int(sum(neg) + sum(pos)) if num_examples is None else num_examples,
        "num-pos": int(sum(pos)) if num_pos is None else num_pos,
        "hist-neg": neg, "hist-pos": pos, "eval-seconds": 1.0,
    }
    content = RecordDict({P.EVAL: MetricRecord(metrics), P.SITE: ConfigRecord({"site": site, "status": "ok"})})
    return Message(content, 1, "evaluate")


GLOBAL = {"w": np.zeros((4, 5), np.float32), "bn.running_var": np.ones(3, np.float32),
          "bn.num_batches_tracked": np.array(7, np.int64)}


def _direction(rng: np.random.Generator, n: int, norm: float) -> np.ndarray:
    d = rng.normal(size=n)
    return d * (norm / np.linalg.norm(d))


def site_arrays(step: float, seed: int = 0, stats_step: float | None = None) -> dict[str, np.ndarray]:
    """GLOBAL moved by an honest site's fine-tuning: weight update of norm `step`, BatchNorm-statistics
    update of norm `stats_step` (default `step`)."""
    rng = np.random.default_rng(seed)
    out = {k: v.copy() for k, v in GLOBAL.items()}
    out["w"] = (GLOBAL["w"] + _direction(rng, 20, step).reshape(4, 5)).astype(np.float32)
    stats = step if stats_step is None else stats_step
    out["bn.running_var"] = (GLOBAL["bn.running_var"] + np.abs(_direction(rng, 3, stats))).astype(np.float32)
    out["bn.num_batches_tracked"] = np.array(9, np.int64)
    return out
