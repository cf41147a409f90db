"""What the coordinator accepts beyond well-formed weights (server/validate.py): bounded updates,
bounded num-examples, consistent evaluation histograms, and a finite aggregate.

- Update norm ||w_site - w_global|| (float weights only, in float64 so values near the float32
  maximum cannot overflow), in two groups: learned weights and BatchNorm running statistics.
  Each group is bounded by `norm-factor` x the *lower* median of the round's norms of that group
  (the lower median, so that with two sites an attacker cannot drag the bound up) and an absolute
  `norm-max`; under central DP the whole update is also bounded by the DP clip norm. Above a bound
  an update is clipped (scaled back onto it) or rejected, per `screening.action`; the site is named
  either way. A clipped update that still holds a negative BatchNorm running variance is rejected.
- num-examples: rejected above `max-examples`; capped at what the site declared in its first
  accepted reply of the run (the join registry, kept in the run folder for --resume) and at
  `examples-factor` x the round's lower median, so a reply claiming 2**62 examples cannot take
  all the weight.
- The aggregate: finite, and no negative BatchNorm running variance (its scores would be NaN).
- Evaluation histograms: the requested bin count, non-negative integer counts, totals equal to
  num-examples / num-pos and at most `max-examples`.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mammo_fl.server.safeguard_settings import ScreeningSettings
from mammo_fl.server.validate import Rejected, Screened

REL_TOL = 1e-5  # a site that clipped to exactly the bound is not "above" it after float32 rounding


@dataclass
class SiteNote:
    """Something screening changed in an accepted reply (shown on the console and in metrics.csv)."""

    site: str
    what: str  # clipped | capped
    detail: str


@dataclass
class ScreenResult:
    accepted: list[Screened]
    rejected: list[Rejected] = field(default_factory=list)
    notes: list[SiteNote] = field(default_factory=list)
    norms: dict[str, dict[str, float]] = field(default_factory=dict)  # site -> group -> update norm as received
    bounds: dict[str, float | None] = field(default_factory=dict)  # group -> the round's bound


def is_float(a: np.ndarray) -> bool:
    return np.issubdtype(a.dtype, np.floating)


# Norm groups: BatchNorm running statistics live in activation units (pixel values squared for the first
# layers) and their change dwarfs the learned weights' (measured: 40,000 vs 1.2 in one round of the quick
# preset), so one norm over both would not see a scaled weight update. Each group gets its own bound.
WEIGHTS, STATS = "weights", "bn-stats"
GROUP_LABEL = {WEIGHTS: "weight", STATS: "BatchNorm-statistics"}


def group_of(key: str) -> str:
    return STATS if key.endswith(("running_mean", "running_var")) else WEIGHTS


def group_norms(arrays: Mapping[str, np.ndarray], global_arrays: Mapping[str, np.ndarray]) -> dict[str, float]:
    """L2 norm of the update per group, over every float weight the site sent (float64: no overflow)."""
    sums: dict[str, float] = {}
    for key, arr in arrays.items():
        if is_float(arr):
            diff = np.subtract(arr.ravel(), global_arrays[key].ravel(), dtype=np.float64)
            sums[group_of(key)] = sums.get(group_of(key), 0.0) + float(np.dot(diff, diff))
    return {g: math.sqrt(sums[g]) for g in (WEIGHTS, STATS) if g in sums}  # fixed order: the reasons read the same


def update_norm(arrays: Mapping[str, np.ndarray], global_arrays: Mapping[str, np.ndarray]) -> float:
    """L2 norm of the whole update (all float weights sent)."""
    return math.sqrt(sum(n * n for n in group_norms(arrays, global_arrays).values()))


def scale_update(arrays: Mapping[str, np.ndarray], global_arrays: Mapping[str, np.ndarray],
                 factors: Mapping[str, float]) -> dict[str, np.ndarray]:
    """w_global + factor(group) x (w_site - w_global) for float weights; integer buffers unchanged."""
    out: dict[str, np.ndarray] = {}
    for key, arr in arrays.items():
        factor = factors.get(group_of(key), 1.0)
        if is_float(arr) and factor != 1.0:
            glob = global_arrays[key].astype(np.float64)
            out[key] = (glob + factor * (arr.astype(np.float64) - glob)).astype(arr.dtype)
        else:
            out[key] = arr
    return out


def _with_examples(rep: Screened, n: int) -> Screened:
    return dataclasses.replace(rep, metrics={**rep.metrics, "num-examples": int(n)})


def screen_examples(accepted: list[Screened], s: ScreeningSettings,
                    registry: Mapping[str, int]) -> ScreenResult:
    """Reject impossible num-examples, cap the rest (join registry, then the round's median)."""
    out = ScreenResult(accepted=[])
    for rep in accepted:
        n = int(rep.metrics["num-examples"])
        if n > s.max_examples:
            out.rejected.append(Rejected(rep.node, rep.site,
                                         f"num-examples {n} exceeds screening.max-examples {s.max_examples}"))
            continue
        declared = registry.get(rep.site)
        if declared is not None and n > declared:
            out.notes.append(SiteNote(rep.site, "capped", f"num-examples {n} capped to {declared} declared at join"))
            rep = _with_examples(rep, declared)
        out.accepted.append(rep)
    if s.examples_factor > 0 and out.accepted:
        cap = int(s.examples_factor * statistics.median_low(int(r.metrics["num-examples"]) for r in out.accepted))
        for i, rep in enumerate(out.accepted):
            n = int(rep.metrics["num-examples"])
            if n > max(cap, 1):
                out.notes.append(SiteNote(rep.site, "capped", f"num-examples {n} capped to {cap} "
                                          f"({s.examples_factor:g} x the round's median)"))
                out.accepted[i] = _with_examples(rep, cap)
    return out


def register(accepted: list[Screened], registry: dict[str, int]) -> None:
    """A site's first accepted reply of the run declares its num-examples (the cap from then on)."""
    for rep in accepted:
        registry.setdefault(rep.site, int(rep.metrics["num-examples"]))


def norm_bound(norms: list[float], s: ScreeningSettings) -> float | None:
    """The round's bound on one group's update norms, or None when no bound applies."""
    bounds = []
    finite = [n for n in norms if math.isfinite(n)]
    median = statistics.median_low(finite) if finite else 0.0
    if s.norm_factor > 0 and median > 0:  # a zero median (nobody trained) says nothing about scale
        bounds.append(s.norm_factor * median)
    if s.norm_max > 0:
        bounds.append(s.norm_max)
    return min(bounds) if bounds else None


def _median(norms: dict[str, dict[str, float]], group: str) -> float:
    return statistics.median_low([n[group] for n in norms.values() if math.isfinite(n.get(group, math.nan))] or [0.0])


def screen_norms(accepted: list[Screened], global_arrays: Mapping[str, np.ndarray], s: ScreeningSettings,
                 dp_clip: float | None = None) -> ScreenResult:
    """Clip or reject updates above the round's bound (per norm group) or above `dp_clip`, the DP clip
    norm every site must respect (whole update)."""
    norms = {rep.site: group_norms(rep.arrays or {}, global_arrays) for rep in accepted}
    groups = sorted({g for n in norms.values() for g in n})
    bounds = {g: norm_bound([n[g] for n in norms.values() if g in n], s) for g in groups}
    out = ScreenResult(accepted=[], norms=norms, bounds=bounds)
    for rep in accepted:
        mine = norms[rep.site]
        if not all(math.isfinite(n) for n in mine.values()):
            out.rejected.append(Rejected(rep.node, rep.site, "update norm is not finite"))
            continue
        factors, why = {}, []
        for g, norm in mine.items():
            bound = bounds[g]
            if bound is not None and norm > bound * (1 + REL_TOL):
                factors[g] = bound / norm
                why.append(f"{GROUP_LABEL[g]} update norm {norm:.4g} above the bound {bound:.4g} "
                           f"({_ratio(norm, _median(norms, g))} the round's median)")
        total = math.sqrt(sum((n * factors.get(g, 1.0)) ** 2 for g, n in mine.items()))
        if dp_clip and total > dp_clip * (1 + REL_TOL):
            factors = {g: factors.get(g, 1.0) * dp_clip / total for g in mine}
            why.append(f"update norm {total:.4g} above dp.clip-norm {dp_clip:.4g} (the site did not clip)")
        if not why:
            out.accepted.append(rep)
        elif s.action == "reject":
            out.rejected.append(Rejected(rep.node, rep.site, "; ".join(why)))
        else:
            clipped = scale_update(rep.arrays or {}, global_arrays, factors)
            bad = negative_variance(clipped)  # a direction no honest site takes, even when shortened
            if bad:
                out.rejected.append(Rejected(rep.node, rep.site, "; ".join(why) + f"; clipped, it still has a {bad}"))
            else:
                out.notes.append(SiteNote(rep.site, "clipped", "; ".join(why) + "; clipped onto the bound"))
                out.accepted.append(dataclasses.replace(rep, arrays=clipped))
    return out


def _ratio(norm: float, median: float) -> str:
    return f"{norm / median:.3g} x" if median > 0 else "vs a zero"


def negative_variance(arrays: Mapping[str, np.ndarray]) -> str | None:
    """A BatchNorm running variance below 0 (the model's scores would be NaN), or None."""
    for key in sorted(arrays):
        if key.endswith("running_var") and (arrays[key] < 0).any():
            return f"BatchNorm running variance {key!r} has {int((arrays[key] < 0).sum())} negative value(s)"
    return None


def invalid_model_reason(arrays: Mapping[str, np.ndarray]) -> str | None:
    """Why an aggregate must not be checkpointed: NaN/Inf (e.g. float32 overflow) or a negative
    BatchNorm variance (an update pushed past the sites' values), or None."""
    for key in sorted(arrays):
        arr = arrays[key]
        if is_float(arr) and not np.isfinite(arr).all():
            return f"weight {key!r} has {int((~np.isfinite(arr)).sum())} NaN/Inf value(s)"
    return negative_variance(arrays)


def histogram_problem(metrics: Mapping[str, Any], bins: int, max_examples: int) -> str | None:
    """Why an evaluation reply's histograms are inconsistent, or None."""
    hists = {name: metrics[name] for name in ("hist-neg", "hist-pos")}
    for name, values in hists.items():
        if len(values) != bins:
            return f"{name} has {len(values)} bins, expected {bins}"
        bad = [v for v in values if not float(v).is_integer() or v < 0]
        if bad:
            return f"{name} holds {len(bad)} count(s) that are not non-negative integers, e.g. {bad[0]!r}"
    n_neg, n_pos = int(sum(hists["hist-neg"])), int(sum(hists["hist-pos"]))
    if n_neg + n_pos != int(metrics["num-examples"]):
        return f"histograms count {n_neg + n_pos} scores but num-examples is {metrics['num-examples']}"
    if n_pos != int(metrics["num-pos"]):
        return f"hist-pos counts {n_pos} scores but num-pos is {metrics['num-pos']}"
    if n_neg + n_pos > max_examples:
        return f"histograms count {n_neg + n_pos} scores, above screening.max-examples {max_examples}"
    return None


def screen_histograms(accepted: list[Screened], bins: int, max_examples: int) -> tuple[list[Screened], list[Rejected]]:
    good, bad = [], []
    for rep in accepted:
        why = histogram_problem(rep.metrics, bins, max_examples)
        if why is None:
            good.append(rep)
        else:
            bad.append(Rejected(rep.node, rep.site, why))
    return good, bad
