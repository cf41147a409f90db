"""Aggregation: Flower's strategies (common/federation/strategies.py) on screened replies, plus FedBN.

We run our own round loop (bounded waits, screening, checkpoints) and use the Flower strategy
object only for what it is good at: `aggregate_train`. Learnable floating-point weights go through
the strategy. BatchNorm statistics (`running_mean`, `running_var`) are averages, not parameters:
they get the plain weighted mean, since a server step (FedAvgM's learning rate and momentum,
FedAdam) would extrapolate them -- even to a negative variance. Except where the strategy must see
them: the robust strategies (a plain mean would let one scaled update through the statistics) and
the DP wrapper (the statistics are part of the clipped update, so they must be noised too); none of
these takes a server step. Integer buffers (`num_batches_tracked`) get a rounded weighted mean.
With FedBN the sites do not send BatchNorm weights/statistics, so the global model keeps its
own and only the rest is aggregated. FedOpt moments (m_t, v_t) and FedAvgM's momentum are saved in
the run folder so `--resume` continues with the same optimiser state.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mammo_fl.common.federation import protocol as P
from mammo_fl.common.utils.atomic import atomic_path
from mammo_fl.server.settings import FederationSettings
from mammo_fl.server.validate import Screened


def build_strategy(s: FederationSettings) -> Any:
    from flwr.serverapp import strategy as fs

    common = dict(
        fraction_train=1.0,
        fraction_evaluate=1.0,
        min_train_nodes=s.min_sites,
        min_evaluate_nodes=s.min_sites,
        min_available_nodes=s.min_sites,
    )
    if s.strategy == "fedavg":
        return fs.FedAvg(**common)
    if s.strategy == "fedprox":
        return fs.FedProx(proximal_mu=s.finetune.proximal_mu, **common)
    if s.strategy == "fedavgm":
        return fs.FedAvgM(server_learning_rate=s.server_lr, server_momentum=s.server_momentum, **common)
    opt = dict(eta=s.eta, eta_l=s.eta_l, beta_1=s.beta_1, beta_2=s.beta_2, tau=s.tau)
    if s.strategy == "fedadam":
        return fs.FedAdam(**common, **opt)
    if s.strategy == "fedmedian":
        return fs.FedMedian(**common)
    if s.strategy == "fedtrimmedavg":
        return fs.FedTrimmedAvg(beta=s.trimmed_beta, **common)
    if s.strategy == "krum":
        return fs.Krum(num_malicious_nodes=s.krum_malicious, **common)
    return fs.FedYogi(**common, **opt)


STATISTICS = ("running_mean", "running_var")


def _is_float(a: np.ndarray) -> bool:
    return np.issubdtype(a.dtype, np.floating)


def _is_statistic(key: str) -> bool:
    return key.rsplit(".", 1)[-1] in STATISTICS


# Strategies that aggregate the BatchNorm statistics themselves (see the module docstring).
STATISTICS_BY_STRATEGY = ("FedMedian", "FedTrimmedAvg", "Krum")


def _strategy_takes_statistics(strategy: Any) -> bool:
    name = type(strategy).__name__
    return name in STATISTICS_BY_STRATEGY or name.startswith("DifferentialPrivacy")


def aggregate(
    strategy: Any, server_round: int, global_arrays: dict[str, np.ndarray], accepted: list[Screened]
) -> dict[str, np.ndarray]:
    """New global weights from the accepted replies (keys the sites did not send stay as they are)."""
    from flwr.app import MetricRecord, RecordDict

    sent_keys = sorted(accepted[0].arrays or {})
    by_strategy = _strategy_takes_statistics(strategy)
    float_keys = [k for k in sent_keys if _is_float(global_arrays[k]) and (by_strategy or not _is_statistic(k))]
    mean_keys = [k for k in sent_keys if k not in float_keys]  # BatchNorm statistics and integer counters
    messages = []
    for rep in accepted:
        arrays = {k: rep.arrays[k] for k in float_keys}
        content = RecordDict(
            {
                P.ARRAYS: P.numpy_to_arrayrecord(arrays),
                P.METRICS: MetricRecord({"num-examples": int(rep.metrics["num-examples"])}),
            }
        )
        messages.append(_Reply(content))
    current = {k: global_arrays[k] for k in float_keys}
    if type(strategy).__name__ == "FedAvgM":  # what its configure_train would have set (an ArrayRecord)
        strategy.current_arrays = P.numpy_to_arrayrecord(current)
    elif hasattr(strategy, "current_arrays"):  # FedOpt: the same, as a dict
        strategy.current_arrays = current
    new_record, _metrics = strategy.aggregate_train(server_round, messages)
    if new_record is None:
        raise RuntimeError("strategy returned no aggregate")
    new = dict(global_arrays)
    for k, v in P.arrayrecord_to_numpy(new_record).items():
        new[k] = np.asarray(v, dtype=global_arrays[k].dtype).reshape(global_arrays[k].shape)
    weights = np.array([rep.metrics["num-examples"] for rep in accepted], dtype=np.float64)
    weights /= weights.sum()
    for k in mean_keys:
        mean = sum(w * rep.arrays[k].astype(np.float64) for w, rep in zip(weights, accepted, strict=True))
        new[k] = (mean if _is_float(global_arrays[k]) else np.rint(mean)).astype(global_arrays[k].dtype)
    return new


class _Reply:
    """The part of a reply Message that `Strategy.aggregate_train` reads (already screened, no error).

    Building real Messages needs a running Flower task context, which unit tests and
    simulations may not have; the strategy only calls `has_error()` and `.content`.
    """

    def __init__(self, content: Any) -> None:
        self.content = content

    def has_error(self) -> bool:
        return False


def strategy_snapshot(strategy: Any) -> dict[str, np.ndarray]:
    """FedOpt moments (m_t, v_t) and FedAvgM's momentum (a list, in key order) as flat `name/key` arrays.
    Flower's FedOpt replaces the moment dicts every round (never in place), so those references stay
    valid while a background commit writes them; the momentum arrays are copied (cheap, and safe)."""
    arrays: dict[str, np.ndarray] = {}
    for name in ("m_t", "v_t"):
        moments = getattr(strategy, name, None)
        for k, v in (moments or {}).items():
            arrays[f"{name}/{k}"] = np.asarray(v)
    for i, v in enumerate(getattr(strategy, "momentum_vector", None) or []):
        arrays[f"momentum_vector/{i:06d}"] = np.array(v)
    return arrays


def save_strategy_state(strategy: Any, path: Path) -> None:
    """The strategy's state (a strategy or its `strategy_snapshot`) -> npz; other strategies are
    stateless between rounds."""
    arrays = strategy if isinstance(strategy, dict) else strategy_snapshot(strategy)
    with atomic_path(path) as tmp:
        np.savez(tmp, **arrays)


def load_strategy_state(strategy: Any, path: Path) -> int:
    """Restore FedOpt moments; returns how many arrays were restored."""
    if not path.exists():
        return 0
    with np.load(path) as data:
        restored: dict[str, dict[str, np.ndarray]] = {}
        for key in data.files:
            name, _, k = key.partition("/")
            restored.setdefault(name, {})[k] = data[key]
    for name, moments in restored.items():
        if name == "momentum_vector":
            if hasattr(strategy, name):
                setattr(strategy, name, [moments[k] for k in sorted(moments)])
        elif hasattr(strategy, name):
            setattr(strategy, name, moments)
    return sum(len(m) for m in restored.values())
