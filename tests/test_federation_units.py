"""Fast checks of the federation pieces (no Flower daemons): settings, screening, aggregation,
strategy state, evaluation pooling, site split, CLI input errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tomllib

from mammo_fl.common.federation import protocol as P
from mammo_fl.common.federation import wire as W
from mammo_fl.common.utils.errors import ConfigError
from mammo_fl.common.evaluation.metrics import auc, score_histograms
from mammo_fl.server.pooled_metrics import pool_histograms
from mammo_fl.server.settings import FederationSettings
from mammo_fl.server.strategy import aggregate, build_strategy, load_strategy_state, save_strategy_state
from mammo_fl.server.validate import ArraySpec, Screened, check_arrays, screen

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_run_config_keys_agree_everywhere():
    """Preset, FAB pyproject and the settings dataclass list the same keys with the same defaults."""
    from mammo_fl.server.safeguard_settings import flatten_config  # [dp] tables = Flower's dotted keys

    preset = flatten_config(tomllib.loads((ROOT / "common/presets/federation.toml").read_text()))
    app = flatten_config(
        tomllib.loads((ROOT / "server/flower_app/pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"])
    fields = FederationSettings().to_run_config()
    assert set(preset) == set(app) == set(fields)
    for key, value in preset.items():
        assert app[key] == value, key
        assert fields[key] == value, key


def test_settings_reject_bad_values_and_default_from_empty_config():
    assert FederationSettings.from_run_config({}) == FederationSettings()  # simulation passes {}
    with pytest.raises(ConfigError, match="strategy"):
        FederationSettings.from_run_config({"strategy": "scaffold"})
    with pytest.raises(ConfigError, match="num-server-rounds"):
        FederationSettings.from_run_config({"num-server-rounds": "many"})
    assert FederationSettings.from_run_config({"wire-dtype": "int8"}).wire_dtype == "int8"
    with pytest.raises(ConfigError, match=r"wire-dtype 'int4' unknown; choose one of fp32, fp16, bf16, int8"):
        FederationSettings.from_run_config({"wire-dtype": "int4"})


GOOD = {"w": np.ones((2, 3), np.float32), "n": np.array(5, np.int64)}
SPECS = {"w": ArraySpec((2, 3), "float32"), "n": ArraySpec((), "int64")}
TRAIN_M = {"num-examples": 4, "train-loss": 0.5, "train-seconds": 1.0}
EVAL_M = {"num-examples": 3, "num-pos": 1, "hist-neg": [2, 0], "hist-pos": [0, 1], "eval-seconds": 0.5}


def _reply(update: dict[str, np.ndarray] | None, metrics: dict, site: str = "a", status: str = "ok",
           evaluation: dict | None = None, base: dict[str, np.ndarray] | None = None):
    """A site's reply as client/app.py builds it: the update travels as an fp16 delta against `base`."""
    from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

    content = RecordDict({P.SITE: ConfigRecord({"site": site, "status": status, "error": "data-error",
                                                "held": "d1"})})
    if metrics:
        content[P.METRICS] = MetricRecord(metrics)
    if evaluation:
        content[P.EVAL] = MetricRecord(evaluation)
    if update is not None:
        base = base if base is not None else {k: np.zeros_like(v) for k, v in update.items()}
        packed = W.pack_delta(update, base, W.Layout.of(update), "fp16")
        record, meta = P.packed_to_records(packed)
        content[P.ARRAYS] = record
        content[P.WIRE] = ConfigRecord(meta)
    return Message(content, 1, "train")


def test_screen_names_the_site_and_the_problem(task_identity):
    from mammo_fl.server.downlink import Downlink

    down = Downlink({k: np.zeros_like(v) for k, v in GOOD.items()}, ["n", "w"], "fp16")
    nan = {**GOOD, "w": GOOD["w"].copy()}
    nan["w"][0, 0] = np.nan
    replies = {
        1: _reply(GOOD, TRAIN_M, "good", evaluation=EVAL_M),
        2: _reply(nan, TRAIN_M, "nan-site", evaluation=EVAL_M),
        3: _reply({"w": np.ones((3, 2), np.float32), "n": GOOD["n"]}, TRAIN_M, "shape-site"),
        4: _reply({"w": GOOD["w"]}, TRAIN_M, "keys-site"),
        5: _reply(None, {}, "broken-site", status="error"),
        6: _reply(GOOD, {"num-examples": 4, "loss": 0.5, "train-seconds": 1.0}, "metric-site"),
        7: _reply(None, {}, "stale-site", status=P.STATUS_NEED_FULL),
    }
    got = screen(replies, train=True, evaluate=True, expected=SPECS, decode=down.decode_update)
    assert [a.site for a in got.train] == ["good"]
    np.testing.assert_array_equal(got.train[0].arrays["w"], GOOD["w"])  # decoded back to fp32 weights
    assert int(got.train[0].arrays["n"]) == 5
    # the NaN site's update is rejected, but the evaluation it did before training still counts
    assert [e.site for e in got.evals] == ["good", "nan-site"] and got.need_full == [7]
    reasons = {r.site: r.reason for r in got.rejected_train}
    assert "NaN/Inf" in reasons["nan-site"]
    assert "different model layout" in reasons["shape-site"] and "different model layout" in reasons["keys-site"]
    assert reasons["broken-site"] == "site error [data-error] " + P.SITE_ERRORS["data-error"]
    assert "metric names" in reasons["metric-site"]
    assert {r.site for r in got.rejected_eval} == {"shape-site", "keys-site", "metric-site"}  # no evaluation sent
    assert got.held[1] == "d1" and 5 not in got.held


def test_check_arrays_rejects_inf_and_dtype():
    assert check_arrays(GOOD, SPECS) is None
    assert "dtype" in check_arrays({**GOOD, "w": GOOD["w"].astype(np.float64)}, SPECS)
    assert "NaN/Inf" in check_arrays({**GOOD, "w": np.full((2, 3), np.inf, np.float32)}, SPECS)


def _screened(site: str, w: float, n_ex: int, count: int) -> Screened:
    arrays = {"w": np.full((2, 3), w, np.float32), "n": np.array(count, np.int64)}
    return Screened(node=0, site=site, arrays=arrays, metrics={"num-examples": n_ex})


def test_fedavg_weights_by_examples_and_keeps_dtypes():
    s = FederationSettings(strategy="fedavg", min_sites=2)
    glob = {"w": np.zeros((2, 3), np.float32), "n": np.array(0, np.int64), "bn.running_mean": np.ones(3, np.float32)}
    new = aggregate(build_strategy(s), 1, glob, [_screened("a", 1.0, 1, 10), _screened("b", 4.0, 3, 20)])
    np.testing.assert_allclose(new["w"], 3.25)  # (1*1 + 4*3) / 4
    assert new["w"].dtype == np.float32 and new["n"].dtype == np.int64 and int(new["n"]) == 18
    np.testing.assert_array_equal(new["bn.running_mean"], 1.0)  # not sent (FedBN) -> kept


def test_aggregation_does_not_depend_on_reply_order():
    """Replies are deduplicated and ordered by site name, so FedAvg's float sums are bit-identical."""
    from mammo_fl.server.round_loop import _dedupe_sites

    rng = np.random.default_rng(0)
    replies = [Screened(i, f"site_{i}", {"w": rng.normal(size=(64,)).astype(np.float32)},
                        {"num-examples": int(rng.integers(3, 40))}) for i in range(5)]
    replies.append(Screened(9, "site_2", {"w": np.zeros(64, np.float32)}, {"num-examples": 1}))  # impostor
    glob = {"w": np.zeros(64, np.float32)}
    s = FederationSettings(strategy="fedavg", min_sites=2)
    results = []
    for order in ([0, 1, 2, 3, 4, 5], [4, 2, 0, 5, 3, 1]):
        kept, dup = _dedupe_sites([replies[i] for i in order])
        assert [r.site for r in kept] == [f"site_{i}" for i in range(5)] and len(dup) == 1
        results.append(aggregate(build_strategy(s), 1, glob, kept)["w"])
    np.testing.assert_array_equal(results[0], results[1])


def test_fedadam_state_survives_save_and_load(tmp_path):
    s = FederationSettings(strategy="fedadam", min_sites=2, eta=0.1, tau=1e-3)
    strat = build_strategy(s)
    glob = {"w": np.zeros((2, 3), np.float32)}
    reps = [Screened(0, "a", {"w": np.ones((2, 3), np.float32)}, {"num-examples": 1})] * 2
    after1 = aggregate(strat, 1, glob, reps)
    save_strategy_state(strat, tmp_path / "s.npz")
    fresh = build_strategy(s)
    assert load_strategy_state(fresh, tmp_path / "s.npz") == 2  # m_t and v_t
    np.testing.assert_allclose(fresh.m_t["w"], strat.m_t["w"])
    # Round 2 from the restored strategy = round 2 of the uninterrupted one.
    a = aggregate(strat, 2, after1, reps)
    b = aggregate(fresh, 2, after1, reps)
    np.testing.assert_allclose(a["w"], b["w"])
    assert not np.allclose(after1["w"], 0.0)


def test_pooled_auc_from_site_histograms_matches_concatenated_scores():
    rng = np.random.default_rng(0)
    sites, all_y, all_s = [], [], []
    for name in ("a", "b", "c"):
        y = rng.integers(0, 2, 40)
        s = np.clip(rng.normal(0.4 + 0.2 * y, 0.2), 0, 1)
        neg, pos = score_histograms(y, s, bins=1000)
        metrics = {"num-examples": 40, "num-pos": int(y.sum()), "hist-neg": neg.tolist(), "hist-pos": pos.tolist()}
        sites.append(Screened(0, name, None, metrics))
        all_y.append(y)
        all_s.append(s)
    summary = pool_histograms(sites, 1000, 0.5)
    y, s = np.concatenate(all_y), np.concatenate(all_s)
    assert summary.pooled_auc == pytest.approx(auc(y, s), abs=2e-3)
    assert summary.n_pos == int(y.sum()) and set(summary.site_auc) == {"a", "b", "c"}
    # A mean of per-site AUCs is NOT the pooled AUC in general; make sure we did not average.
    assert summary.pooled_auc != pytest.approx(np.mean(list(summary.site_auc.values())), abs=1e-12)


def test_local_split_is_stratified_saved_and_stable(tmp_path):
    import pandas as pd

    from mammo_fl.client.site import SiteInfo, site_subsets

    images = pd.DataFrame({
        "image_id": [f"i{k}" for k in range(40)],
        "image_path": [f"/x/{k}.dcm" for k in range(40)],
        "patient_id": [f"p{k // 4}" for k in range(40)],
        "label": [1 if (k // 4) % 2 else 0 for k in range(40)],
    })
    site = SiteInfo("a", tmp_path, tmp_path / "state", {})
    train, val = site_subsets(site, images, 0.3, seed=0)
    assert set(train["patient_id"]).isdisjoint(set(val["patient_id"]))
    assert val["label"].nunique() == 2 and train["label"].nunique() == 2
    again_train, again_val = site_subsets(site, images, 0.5, seed=99)  # saved split wins
    assert list(again_val["image_id"]) == list(val["image_id"])


def test_resolve_site_deployment_and_simulation(tmp_path):
    from mammo_fl.client.site import resolve_site

    (tmp_path / "b-site").mkdir()
    (tmp_path / "a-site").mkdir()
    dep = resolve_site({"site": "h1", "data-dir": str(tmp_path / "a-site")}, {})
    assert dep.name == "h1" and dep.state_dir == tmp_path / "a-site" / ".mammo-fl"
    sim = resolve_site({"partition-id": 1, "num-partitions": 2}, {"sites-dir": str(tmp_path)})
    assert sim.name == "b-site"
    with pytest.raises(ConfigError, match="sites-dir"):
        resolve_site({"partition-id": 0}, {})


def _run_cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / args[0]), *args[1:]], capture_output=True, text=True, timeout=timeout)


def test_server_refuses_without_insecure_and_bad_model(tmp_path):
    r = _run_cli("mammo-server", "--model", str(tmp_path / "x.pt"), "--rounds", "1", "--min-sites", "1",
                 "--out", str(tmp_path / "run"))
    assert r.returncode == 2 and "--insecure" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    r = _run_cli("mammo-server", "--model", str(bad), "--rounds", "1", "--min-sites", "1",
                 "--out", str(tmp_path / "run"), "--insecure")
    assert r.returncode == 2 and "bad.pt" in r.stderr and "Traceback" not in r.stderr


def test_client_unreachable_server_retries_then_gives_up(tmp_path):
    from mammo_fl.common.federation.processes import free_port

    site = tmp_path / "site"
    site.mkdir()
    r = _run_cli("mammo-client", "--site", "h1", "--data", str(site), "--server", f"127.0.0.1:{free_port()}",
                 "--insecure", "--retry-for", "3")
    assert r.returncode == 2, r.stderr
    assert "unreachable" in r.stdout and "retrying in 1 s" in r.stdout
    assert "giving up" in r.stderr and "Traceback" not in r.stderr + r.stdout
    r = _run_cli("mammo-client", "--site", "h1", "--data", str(tmp_path / "nope"), "--server", "127.0.0.1:1",
                 "--insecure")
    assert r.returncode == 2 and "does not exist" in r.stderr


def test_rundir_events_status_and_rows(tmp_path):
    from mammo_fl.server.rundir import RunDir

    rd = RunDir(tmp_path, launch_id="abc")
    rd.event("site_rejected", round=1, kind="train", site="h1", reason="NaN", value=float("nan"))
    rd.set_status("running", run_id=3)
    rows = [{"round": 1, "pooled_auc": 0.7, "sites": 2, "auc_h1": 0.6, "evaluated_by": "round 2"},
            {"round": 2, "pooled_auc": None, "sites": 1, "evaluated_by": "final"}]
    rd.write_rows(rows)
    rd.commit_round(2, {"strategy": "fedavg"})
    import json

    (ev,) = [json.loads(line) for line in rd.events.read_text().splitlines()]
    assert ev["kind"] == "train" and ev["launch_id"] == "abc" and ev["value"] is None
    assert json.loads(rd.status_file.read_text())["status"] == "running"
    assert rd.metrics_csv.read_text().splitlines()[0].startswith("round,pooled_auc,sites")
    assert rd.load_state()["completed_round"] == 2 and rd.plot.exists()


@pytest.mark.parametrize("dtype,rel", [("fp32", 2.0**-23), ("fp16", 2.0**-11), ("bf16", 2.0**-8)])
def test_reduced_precision_updates_aggregate_like_fp32(dtype, rel):
    """Sites send fp16/bf16 deltas; the coordinator decodes them and aggregates in fp32: the global
    model it publishes is within the stated bound of the exact fp32 aggregate (per element,
    rel * the weighted mean |delta| plus one fp32 rounding of the weights)."""
    from flwr.app import ConfigRecord, RecordDict

    from mammo_fl.server.downlink import Downlink

    rng = np.random.default_rng(0)
    glob = {"w": rng.normal(0, 0.05, 4096).astype(np.float32), "n": np.array(10, np.int64)}
    sites = [{"w": glob["w"] + rng.normal(0, 1e-4, 4096).astype(np.float32), "n": np.array(12, np.int64)}
             for _ in range(3)]
    examples = [5, 9, 2]
    settings = FederationSettings(strategy="fedavg", min_sites=2)
    exact = aggregate(build_strategy(settings), 1, glob,
                      [Screened(i, f"s{i}", w, {"num-examples": n}) for i, (w, n) in enumerate(zip(sites, examples))])
    down = Downlink(dict(glob), ["n", "w"], dtype)
    decoded = []
    for i, (w, n) in enumerate(zip(sites, examples, strict=True)):
        record, meta = P.packed_to_records(W.pack_delta(w, glob, down.layout, dtype))
        arrays = down.decode_update(RecordDict({P.ARRAYS: record, P.WIRE: ConfigRecord(meta)}))
        decoded.append(Screened(i, f"s{i}", arrays, {"num-examples": n}))
    published = down.publish(aggregate(build_strategy(settings), 1, glob, decoded))
    weights = np.array(examples, np.float64) / sum(examples)
    mean_abs = sum(wk * np.abs(s["w"].astype(np.float64) - glob["w"]) for wk, s in zip(weights, sites, strict=True))
    bound = 2 * rel * (mean_abs + np.abs(exact["w"] - glob["w"])) + 2.0**-23 * np.abs(glob["w"]) + 1e-12
    err = np.abs(published["w"].astype(np.float64) - exact["w"])
    assert np.all(err <= bound), float(np.max(err / bound))
    assert int(published["n"]) == 12 and published["w"].dtype == np.float32
    if dtype != "fp32":  # and it is not the exact aggregate: the precision really was reduced
        assert not np.array_equal(published["w"], exact["w"])


def test_int8_updates_aggregate_like_fp32_within_half_a_step():
    """Three sites send int8 deltas; the coordinator decodes, aggregates (FedAvg) and publishes an int8
    delta: per element the published model is within the example-weighted mean of the sites' half
    steps (scale / 2 of each element's block) plus the published delta's own half step of the exact
    fp32 aggregate (and float32 roundings)."""
    from flwr.app import ConfigRecord, RecordDict

    from mammo_fl.common.federation.wire_int8 import INT8_BLOCK
    from mammo_fl.server.downlink import Downlink

    def half_step(packed: W.Packed, n: int) -> np.ndarray:
        return np.repeat(packed.scales.astype(np.float64), INT8_BLOCK)[:n] / 2

    rng = np.random.default_rng(0)
    n = 5 * INT8_BLOCK + 17
    glob = {"w": rng.normal(0, 0.05, n).astype(np.float32), "n": np.array(10, np.int64)}
    sites = [{"w": glob["w"] + (rng.standard_t(3, n) * 1e-4).astype(np.float32), "n": np.array(12, np.int64)}
             for _ in range(3)]
    examples = [5, 9, 2]
    settings = FederationSettings(strategy="fedavg", min_sites=2)
    exact = aggregate(build_strategy(settings), 1, glob,
                      [Screened(i, f"s{i}", w, {"num-examples": k}) for i, (w, k) in enumerate(zip(sites, examples))])
    down = Downlink(dict(glob), ["n", "w"], "int8")
    decoded, site_error = [], np.zeros(n)
    weights = np.array(examples, np.float64) / sum(examples)
    for i, (w, k) in enumerate(zip(sites, examples, strict=True)):
        packed = W.pack_delta(w, glob, down.layout, "int8")
        record, meta = P.packed_to_records(packed)
        arrays = down.decode_update(RecordDict({P.ARRAYS: record, P.WIRE: ConfigRecord(meta)}))
        decoded.append(Screened(i, f"s{i}", arrays, {"num-examples": k}))
        site_error += weights[i] * half_step(packed, n)
    published = down.publish(aggregate(build_strategy(settings), 1, glob, decoded))
    assert down.delta is not None and down.delta.dtype == "int8"  # the downlink is int8 as well
    bound = (site_error + half_step(down.delta, n)) * (1 + 2.0**-16) + 2.0**-22 * np.abs(glob["w"])
    err = np.abs(published["w"].astype(np.float64) - exact["w"])
    assert np.all(err <= bound), float(np.max(err / bound))
    assert int(published["n"]) == 12 and published["w"].dtype == np.float32
    assert np.max(err) > 2.0**-22 * np.max(np.abs(glob["w"]))  # int8 really is coarser than fp32


@pytest.mark.parametrize("stage", ["all", "top", "head"])
@pytest.mark.parametrize("fedbn", [False, True])
def test_exchanged_keys_are_what_training_can_change(stage, fedbn):
    """train-layers names the same modules as set_trainable: their parameters and buffers travel, frozen
    layers (and BatchNorm under FedBN) never do."""
    from mammo_fl.common.models import build_model
    from mammo_fl.common.training.loops import set_trainable

    model = build_model("whole_image", {"trunk": "resnet_tiny", "top": {"type": "vgg", "blocks": [[8, 1]]},
                                        "num_classes": 2})
    set_trainable(model, stage)
    bn = P.batchnorm_prefixes(model)
    keys = set(P.exchanged_keys(model.state_dict(), bn, stage, fedbn))
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {k for k in trained if not (fedbn and P.is_batchnorm_key(k, bn))} <= keys
    frozen_modules = {n for n, m in model.named_modules() if n and not any(p.requires_grad for p in m.parameters())
                      and list(m.parameters())}
    assert not any(k.startswith(f"{m}.") for k in keys for m in frozen_modules)
    if fedbn:
        assert not any(P.is_batchnorm_key(k, bn) for k in keys)
    if stage == "all" and not fedbn:
        assert keys == set(model.state_dict())
