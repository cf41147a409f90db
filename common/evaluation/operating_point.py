"""The operating point: the threshold a screening model is used at, chosen on fixed-bin score histograms.

A target specificity (or sensitivity) picks a bin edge k/bins of the pooled validation histograms;
calling `score >= edge` a recall is the same rule as `sens_spec_from_histograms`. Each site's
TP/FN/TN/FP at that edge come from its own histogram, so the sites' counts add up to the pooled
ones and choosing the threshold needs nothing beyond the histograms the sites already send.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mammo_fl.common.utils.errors import ConfigError, DataError

KINDS = ("specificity", "sensitivity", "fixed")
_EPS = 1e-9  # targets like 0.9 * 10 must not round up to 10 negatives


@dataclass(frozen=True)
class Target:
    """What the threshold must achieve: `specificity >= value`, `sensitivity >= value`, or a fixed threshold."""

    kind: str
    value: float

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"operating-point target kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if not (isinstance(self.value, (int, float)) and 0.0 <= float(self.value) <= 1.0):
            raise ConfigError(f"operating-point {self.kind} must be in [0, 1], got {self.value!r}")

    def describe(self) -> str:
        if self.kind == "fixed":
            return f"fixed threshold {self.value:g}"
        return f"{self.kind} >= {self.value:g}"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "value": float(self.value)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Target:
        return cls(str(data["kind"]), float(data["value"]))


def target_from_settings(specificity: float, sensitivity: float, threshold: float) -> Target:
    """Sensitivity target when set (> 0), else the specificity target (> 0), else the fixed threshold."""
    for name, value in (("operating-point-specificity", specificity), ("operating-point-sensitivity", sensitivity),
                        ("threshold", threshold)):
        if not 0.0 <= float(value) <= 1.0:
            raise ConfigError(f"{name} must be in [0, 1], got {value!r}")
    if sensitivity > 0:
        return Target("sensitivity", float(sensitivity))
    if specificity > 0:
        return Target("specificity", float(specificity))
    return Target("fixed", float(threshold))


@dataclass(frozen=True)
class Confusion:
    """Counts at one threshold (recall = score >= threshold)."""

    tp: int = 0
    fn: int = 0
    tn: int = 0
    fp: int = 0

    @property
    def sens(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else math.nan

    @property
    def spec(self) -> float:
        return self.tn / (self.tn + self.fp) if self.tn + self.fp else math.nan

    def __add__(self, other: Confusion) -> Confusion:
        return Confusion(self.tp + other.tp, self.fn + other.fn, self.tn + other.tn, self.fp + other.fp)

    def to_dict(self) -> dict[str, int]:
        return {"tp": self.tp, "fn": self.fn, "tn": self.tn, "fp": self.fp}


def _counts(neg: Sequence[int] | np.ndarray, pos: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = np.asarray(neg, dtype=np.int64).ravel()
    p = np.asarray(pos, dtype=np.int64).ravel()
    if n.shape != p.shape or n.size == 0:
        raise DataError(None, f"histograms must have the same, non-zero number of bins ({n.size} vs {p.size})")
    return n, p


def edge_index(threshold: float, bins: int) -> int:
    """Index k of the bin edge k/bins a threshold falls on (rounded down, as sens_spec_from_histograms does)."""
    return int(min(max(math.floor(threshold * bins + _EPS), 0), bins))


def confusion_at(neg: Sequence[int] | np.ndarray, pos: Sequence[int] | np.ndarray, threshold: float) -> Confusion:
    """TP/FN/TN/FP of one histogram pair when scores >= `threshold` are recalled."""
    n, p = _counts(neg, pos)
    k = edge_index(threshold, n.size)
    return Confusion(tp=int(p[k:].sum()), fn=int(p[:k].sum()), tn=int(n[:k].sum()), fp=int(n[k:].sum()))


def threshold_for_target(neg: Sequence[int] | np.ndarray, pos: Sequence[int] | np.ndarray, target: Target) -> float:
    """The bin edge meeting the target on these histograms; NaN when the class it needs is absent.

    Specificity target: the lowest edge whose specificity reaches it (the most sensitive such threshold).
    Sensitivity target: the highest edge whose sensitivity reaches it (the most specific such threshold).
    """
    if target.kind == "fixed":
        return float(target.value)
    n, p = _counts(neg, pos)
    bins = n.size
    if target.kind == "specificity":
        total = int(n.sum())
        if total == 0:
            return math.nan
        need = math.ceil(target.value * total - _EPS)
        below = np.concatenate([[0], np.cumsum(n)])  # below[k] = negatives under edge k
        return int(np.searchsorted(below, need, side="left")) / bins
    total = int(p.sum())
    if total == 0:
        return math.nan
    need = math.ceil(target.value * total - _EPS)
    below = np.concatenate([[0], np.cumsum(p)])  # positives under edge k; the rest are recalled
    return int(np.searchsorted(below, total - need, side="right") - 1) / bins


def checkpoint_threshold(metrics: Mapping[str, Any] | None) -> float | None:
    """The operating-point threshold a checkpoint carries (federated final.pt), or None."""
    point = (metrics or {}).get("operating_point")
    if not isinstance(point, Mapping):
        return None
    value = point.get("threshold")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None
