"""One message per round, in process: the real ClientApp handler (real data, real training steps on a
tiny model) against the coordinator's real downlink, screening, aggregation and publishing, without
Flower daemons. Checks what travels (full, then fp16 or int8 deltas) and that every site reconstructs
the coordinator's model bit for bit."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from mammo_fl.common.federation import protocol as P
from mammo_fl.common.federation.round_config import RoundConfig
from mammo_fl.common.training.finetune_config import FineTuneConfig

SPEC = {"trunk": "resnet_tiny", "top": {"type": "vgg", "blocks": [[8, 1]]}, "num_classes": 2}
PREP = {"height": 64, "width": 48, "mode": "paper", "mean": 40.0}


def _config(rnd: int, evaluate: bool, wire: str) -> object:
    ft = FineTuneConfig(lr=1e-3, batch_size=2, max_steps=2, augment=False)
    return RoundConfig(server_round=rnd, fed_id="fed-test", model_kind="whole_image", model_spec=SPEC,
                       preprocessing=PREP, finetune=ft, val_fraction=0.4, num_threads=1, hist_bins=50,
                       evaluate=evaluate, wire_dtype=wire).to_record()


def _ask(sites, contents, kind):
    """Each site's real handler answers its message (in process: no worker socket in the node config)."""
    from flwr.app import Context, Message, RecordDict

    from mammo_fl.client.app import handle

    replies = {}
    for node, site in sites.items():
        msg = Message(contents[node], node, "train" if kind == "train" else "evaluate")
        ctx = Context(run_id=1, node_id=node, node_config=site, state=RecordDict(), run_config={})
        replies[node] = handle(msg, ctx, kind)
    return replies


@pytest.mark.parametrize("wire,wire_np", [("fp16", np.float16), ("int8", np.int8)])
def test_rounds_travel_as_deltas_and_sites_hold_the_coordinators_model(tmp_path, synth_sites, task_identity,
                                                                      wire, wire_np):
    import torch

    from mammo_fl.client import site_work
    from mammo_fl.common.models import build_model
    from mammo_fl.server.downlink import Downlink
    from mammo_fl.server.settings import FederationSettings
    from mammo_fl.server.strategy import aggregate, build_strategy
    from mammo_fl.server.validate import expected_specs, screen

    torch.manual_seed(0)
    site_work._SESSIONS.clear()
    arrays = P.state_to_numpy(build_model("whole_image", SPEC).state_dict())
    sites = {}
    for i, name in enumerate(("site-1", "site-2"), start=1):
        data = shutil.copytree(synth_sites / name, tmp_path / name)
        sites[i] = {"site": name, "data-dir": str(data), "state-dir": str(tmp_path / f"state-{name}"),
                    "min-patients-per-class": 0}  # 3 patients a site: evaluate anyway
    down = Downlink(arrays, sorted(arrays), wire)
    strategy = build_strategy(FederationSettings(min_sites=2))
    n_float = sum(v.size for k, v in arrays.items() if v.dtype == np.float32)

    for rnd in (1, 2):
        evaluate = rnd > 1
        contents = down.contents(list(sites), _config(rnd, evaluate, wire))
        sent = contents[1][P.ARRAYS][P.FLOATS].numpy()
        # round 1: the full fp32 model; round 2: a delta in the wire dtype against the model the sites hold
        assert sent.dtype == (np.float32 if rnd == 1 else wire_np) and sent.size == n_float
        assert (P.SCALES in contents[1][P.ARRAYS]) == (rnd > 1 and wire == "int8")
        replies = _ask(sites, contents, "train")
        got = screen(replies, train=True, evaluate=evaluate, expected=expected_specs(down.arrays, down.exchanged),
                     decode=down.decode_update)
        assert not got.rejected_train and not got.rejected_eval, (got.rejected_train, got.rejected_eval)
        assert set(got.held.values()) == {down.digest}  # every site rebuilt exactly the model it was sent
        assert len(got.evals) == (2 if evaluate else 0)
        update = replies[1].content[P.ARRAYS][P.FLOATS].numpy()
        assert update.dtype == wire_np and update.size == n_float  # the site's update: a delta in the wire dtype
        down.note(got.held)
        down.publish(aggregate(strategy, rnd, down.arrays, got.train))

    # after the last round the final model is evaluated once, sent as a delta again
    final = down.contents(list(sites), _config(2, True, wire))
    replies = _ask(sites, final, "evaluate")
    got = screen(replies, train=False, evaluate=True)
    assert set(got.held.values()) == {down.digest} and len(got.evals) == 2
    assert all(P.ARRAYS not in r.content for r in replies.values())  # nothing but the evaluation comes back
    down.note(got.held)

    # a site that lost the model a delta is made against (new worker, no disk copy) asks for the full model
    site_work._SESSIONS.clear()
    shutil.rmtree(tmp_path / "state-site-1" / "held")
    down.publish({k: (v + 1e-3 if v.dtype == np.float32 else v) for k, v in down.arrays.items()})
    replies = _ask({1: sites[1]}, down.contents([1], _config(3, True, wire)), "evaluate")
    assert screen(replies, train=False, evaluate=True).need_full == [1]
    # ... while a restarted worker of the other site takes the delta from its disk copy
    replies = _ask({2: sites[2]}, down.contents([2], _config(3, True, wire)), "evaluate")
    assert screen(replies, train=False, evaluate=True).held == {2: down.digest}
