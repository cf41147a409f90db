"""Paired comparison of two arms of mammo-sim runs on the same validation images.

    mammo-sim compare RUN_A[,RUN...][:METHOD] RUN_B[,RUN...][:METHOD] [--out FILE.csv] [--resamples 2000]

Every arm of a run keeps its per-image validation scores (RUN/predictions/*.csv). Runs with the
same target, seeds and sizes share the validation set, subsets and partitions, so arm A of one
run (e.g. FedBN) and arm B of another (FedAvg), or two arms of one run (federated vs pooled),
are paired image by image: per (patients, K, seed) AUC(A) - AUC(B) with a patient-level paired
bootstrap CI, per (patients, K) the mean over seeds with the CI of that mean, and per K the mean
over every size and seed (one number for "is A as good as B across the curve"). Several runs of one
grid (sizes run apart, say) make one arm: RUN,RUN,...

A mean gets two CIs because two things vary: the validation patients (bootstrap, patients resampled
whole; the seeds' scores share them) and the training run (a t-interval over the seeds' paired
differences: subsets, partition and training order redrawn). The second is the one that says whether
another seed would rank the arms the same way; with 3 seeds it is wide, which is the point.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from mammo_fl.common.evaluation.metrics import paired_auc_difference, paired_mean_auc_difference
from mammo_fl.common.utils.errors import ConfigError, DataError

PATTERN = re.compile(r"^(?P<method>pooled|federated)(?:_k(?P<k>\d+))?_n(?P<n>\d+)_seed(?P<seed>-?\d+)\.csv$")


@dataclass(frozen=True)
class Arm:
    runs: tuple[Path, ...]
    method: str

    @classmethod
    def parse(cls, text: str) -> Arm:
        """`RUN[,RUN...]` (federated arm) or `RUN[,RUN...]:METHOD` with METHOD pooled | federated."""
        body, sep, method = text.rpartition(":")
        if not sep:
            body, method = text, "federated"
        elif method not in ("pooled", "federated"):
            raise ConfigError(f"arm {text!r}: method after ':' must be pooled or federated, got {method!r}")
        runs = tuple(Path(part) for part in body.split(",") if part)
        if not runs:
            raise ConfigError(f"arm {text!r}: no run folder")
        return cls(runs, method)

    def label(self) -> str:
        return "+".join(run.name for run in self.runs) + f":{self.method}"


def arm_files(arm: Arm) -> dict[tuple[int, int, int], Path]:
    """{(patients, k_sites, seed): predictions file} of one arm (k_sites 0 for pooled), over its runs."""
    out: dict[tuple[int, int, int], Path] = {}
    for run in arm.runs:
        folder = run / "predictions"
        if not folder.is_dir():
            raise DataError(folder, "no per-image predictions (runs before this feature did not keep them)")
        found = 0
        for path in sorted(folder.glob("*.csv")):
            match = PATTERN.match(path.name)
            if not (match and match["method"] == arm.method):
                continue
            key = (int(match["n"]), int(match["k"] or 0), int(match["seed"]))
            if key in out:
                raise ConfigError(f"arm {arm.label()}: {path.name} is in both {out[key].parent.parent} and {run}; "
                                  "an arm takes each job from one run")
            out[key] = path
            found += 1
        if not found:
            raise DataError(folder, f"no {arm.method} predictions")
    return out


def _pairs(a: Arm, b: Arm) -> list[tuple[tuple[int, int, int], Path, Path]]:
    """Matching jobs: same patients and seed, and the same K where both arms have one."""
    files_a, files_b = arm_files(a), arm_files(b)
    pairs = []
    for (n, k, seed), path_a in sorted(files_a.items()):
        for (n_b, k_b, seed_b), path_b in sorted(files_b.items()):
            if n == n_b and seed == seed_b and (k == k_b or 0 in (k, k_b)):
                pairs.append(((n, max(k, k_b), seed), path_a, path_b))
    if not pairs:
        raise DataError(b.runs[0], f"no job of {b.label()} matches one of {a.label()} (same patients and seed)")
    return pairs


def _aligned(path_a: Path, path_b: Path) -> pd.DataFrame:
    frame_a = pd.read_csv(path_a, dtype={"image_id": str, "patient_id": str})
    frame_b = pd.read_csv(path_b, dtype={"image_id": str, "patient_id": str})
    if set(frame_a["image_id"]) != set(frame_b["image_id"]):
        raise DataError(path_b, f"scores other validation images than {path_a} (different target or split?)")
    merged = frame_a.merge(frame_b[["image_id", "label", "malignant_prob"]], on="image_id", suffixes=("_a", "_b"))
    if (merged["label_a"] != merged["label_b"]).any():
        raise DataError(path_b, f"labels differ from {path_a}")
    return merged.rename(columns={"label_a": "label"}).sort_values("image_id").reset_index(drop=True)


@dataclass(frozen=True)
class Comparison:
    per_seed: pd.DataFrame  # one row per (patients, K, seed)
    summary: pd.DataFrame  # per (patients, K): the mean over seeds
    overall: pd.DataFrame  # per K with more than one size: the mean over every (patients, seed) pair
    no_overall: tuple[int, ...] = ()  # K whose sizes were scored on different validation sets: no common mean


def compare_arms(a: Arm, b: Arm, resamples: int = 2000) -> Comparison:
    """AUC(A) - AUC(B) per seed, its mean over seeds per (patients, K), and its mean over sizes per K."""
    per_seed, grouped = [], {}
    for (n, k, seed), path_a, path_b in _pairs(a, b):
        m = _aligned(path_a, path_b)
        res = paired_auc_difference(m["label"], m["malignant_prob_a"], m["malignant_prob_b"], n=resamples, seed=0,
                                    groups=m["patient_id"])
        per_seed.append({"patients": n, "k_sites": k, "seed": seed, "auc_a": res.auc_a, "auc_b": res.auc_b,
                         "difference": res.difference, "ci_low": res.ci[0], "ci_high": res.ci[1],
                         "share_a_better": res.share_a_better})
        grouped.setdefault((n, k), []).append(m)
    summary = [_mean_row(frames, [r["difference"] for r in per_seed if (r["patients"], r["k_sites"]) == key],
                         resamples, patients=key[0], k_sites=key[1], seeds=len(frames))
               for key, frames in sorted(grouped.items())]
    overall, no_overall = [], []
    for k in sorted({k for _, k in grouped}):
        sizes = sorted(n for n, k_n in grouped if k_n == k)
        frames = [f for n in sizes for f in grouped[(n, k)]]
        if len(sizes) < 2:
            continue
        if any(list(f["image_id"]) != list(frames[0]["image_id"]) for f in frames):
            no_overall.append(k)  # runs of other targets or splits joined in one arm
            continue
        diffs = [r["difference"] for r in per_seed if r["k_sites"] == k]
        overall.append(_mean_row(frames, diffs, resamples, k_sites=k, sizes=len(sizes), jobs=len(frames)))
    return Comparison(pd.DataFrame(per_seed), pd.DataFrame(summary), pd.DataFrame(overall), tuple(no_overall))


def _mean_row(frames: list[pd.DataFrame], diffs: list[float], resamples: int, **key: int) -> dict[str, float]:
    """The mean of AUC(A) - AUC(B) over `frames` (same images) with the CI of that mean."""
    ref = frames[0]
    res = paired_mean_auc_difference(ref["label"], [f["malignant_prob_a"] for f in frames],
                                     [f["malignant_prob_b"] for f in frames], n=resamples, seed=0,
                                     groups=ref["patient_id"])
    seed_sd, seed_ci = _seed_interval(diffs)
    return {**key, "auc_a": res.auc_a, "auc_b": res.auc_b, "mean_difference": res.difference,
            "ci_low": res.ci[0], "ci_high": res.ci[1], "a_better": sum(d > 0 for d in diffs),
            "min_difference": min(diffs), "max_difference": max(diffs),
            "seed_sd": seed_sd, "seed_ci_low": seed_ci[0], "seed_ci_high": seed_ci[1]}


def _seed_interval(diffs: list[float]) -> tuple[float, tuple[float, float]]:
    """sd of the per-seed differences and the 95% t-interval of their mean (NaN for one seed)."""
    if len(diffs) < 2:
        return float("nan"), (float("nan"), float("nan"))
    values = np.asarray(diffs, dtype=float)
    sd = float(values.std(ddof=1))
    half = float(stats.t.ppf(0.975, len(values) - 1)) * sd / np.sqrt(len(values))
    return sd, (float(values.mean()) - half, float(values.mean()) + half)


def _seed_text(over: str, sd: float, low: float, high: float) -> str:
    return "" if np.isnan(sd) else f"; over {over} sd {sd:.3f}, t-CI [{low:+.3f}, {high:+.3f}]"


def format_comparison(a: Arm, b: Arm, result: Comparison) -> str:
    lines = [f"AUC({a.label()}) - AUC({b.label()}), paired on the same validation images "
             "(95% CI: patients resampled whole)"]
    for r in result.per_seed.itertuples():
        lines.append(f"  n={r.patients:<3} K={r.k_sites} seed={r.seed}: {r.auc_a:.3f} vs {r.auc_b:.3f}  "
                     f"diff {r.difference:+.3f} [{r.ci_low:+.3f}, {r.ci_high:+.3f}]")
    lines.append("mean over seeds (CI of the mean under validation-set resampling; t-CI over the seeds' differences):")
    for r in result.summary.itertuples():
        lines.append(f"  n={r.patients:<3} K={r.k_sites}: {r.auc_a:.3f} vs {r.auc_b:.3f}  mean diff "
                     f"{r.mean_difference:+.3f} [{r.ci_low:+.3f}, {r.ci_high:+.3f}]  A better in "
                     f"{r.a_better}/{r.seeds} seeds (per-seed {r.min_difference:+.3f}..{r.max_difference:+.3f}"
                     f"{_seed_text('seeds', r.seed_sd, r.seed_ci_low, r.seed_ci_high)})")
    if len(result.overall):
        lines.append("mean over every size and seed (each job counts once):")
    for r in result.overall.itertuples():
        lines.append(f"  {r.sizes} sizes K={r.k_sites}: {r.auc_a:.3f} vs {r.auc_b:.3f}  mean diff "
                     f"{r.mean_difference:+.3f} [{r.ci_low:+.3f}, {r.ci_high:+.3f}]  A better in "
                     f"{r.a_better}/{r.jobs} jobs (per-job {r.min_difference:+.3f}..{r.max_difference:+.3f}"
                     f"{_seed_text('jobs', r.seed_sd, r.seed_ci_low, r.seed_ci_high)})")
    for k in result.no_overall:
        lines.append(f"no mean over sizes for K={k}: its sizes were scored on different validation sets")
    return "\n".join(lines)
