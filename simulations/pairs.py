"""Paired comparison of two arms of mammo-sim runs on the same validation images.

    mammo-sim compare RUN_A[:METHOD] RUN_B[:METHOD] [--out FILE.csv] [--resamples 2000]

Every arm of a run keeps its per-image validation scores (RUN/predictions/*.csv). Runs with the
same target, seeds and sizes share the validation set, subsets and partitions, so arm A of one
run (e.g. FedBN) and arm B of another (FedAvg), or two arms of one run (federated vs pooled),
are paired image by image: per (patients, K, seed) AUC(A) - AUC(B) with a patient-level paired
bootstrap CI, and per (patients, K) the mean over seeds with the CI of that mean.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from mammo_fl.common.evaluation.metrics import paired_auc_difference, paired_mean_auc_difference
from mammo_fl.common.utils.errors import ConfigError, DataError

PATTERN = re.compile(r"^(?P<method>pooled|federated)(?:_k(?P<k>\d+))?_n(?P<n>\d+)_seed(?P<seed>-?\d+)\.csv$")


@dataclass(frozen=True)
class Arm:
    run: Path
    method: str

    @classmethod
    def parse(cls, text: str) -> Arm:
        """`RUN` (federated arm) or `RUN:METHOD` with METHOD pooled | federated."""
        run, sep, method = text.rpartition(":")
        if not sep:
            return cls(Path(text), "federated")
        if method not in ("pooled", "federated"):
            raise ConfigError(f"arm {text!r}: method after ':' must be pooled or federated, got {method!r}")
        return cls(Path(run), method)

    def label(self) -> str:
        return f"{self.run.name}:{self.method}"


def arm_files(arm: Arm) -> dict[tuple[int, int, int], Path]:
    """{(patients, k_sites, seed): predictions file} of one arm (k_sites 0 for pooled)."""
    folder = arm.run / "predictions"
    if not folder.is_dir():
        raise DataError(folder, "no per-image predictions (runs before this feature did not keep them)")
    out: dict[tuple[int, int, int], Path] = {}
    for path in sorted(folder.glob("*.csv")):
        match = PATTERN.match(path.name)
        if match and match["method"] == arm.method:
            out[(int(match["n"]), int(match["k"] or 0), int(match["seed"]))] = path
    if not out:
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
        raise DataError(b.run, f"no job of {b.label()} matches one of {a.label()} (same patients and seed)")
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


def compare_arms(a: Arm, b: Arm, resamples: int = 2000) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-seed rows, per-(patients, K) mean-over-seeds rows) of AUC(A) - AUC(B)."""
    per_seed, grouped = [], {}
    for (n, k, seed), path_a, path_b in _pairs(a, b):
        m = _aligned(path_a, path_b)
        res = paired_auc_difference(m["label"], m["malignant_prob_a"], m["malignant_prob_b"], n=resamples, seed=0,
                                    groups=m["patient_id"])
        per_seed.append({"patients": n, "k_sites": k, "seed": seed, "auc_a": res.auc_a, "auc_b": res.auc_b,
                         "difference": res.difference, "ci_low": res.ci[0], "ci_high": res.ci[1],
                         "share_a_better": res.share_a_better})
        grouped.setdefault((n, k), []).append(m)
    summary = []
    for (n, k), frames in sorted(grouped.items()):
        ref = frames[0]
        res = paired_mean_auc_difference(ref["label"], [f["malignant_prob_a"] for f in frames],
                                         [f["malignant_prob_b"] for f in frames], n=resamples, seed=0,
                                         groups=ref["patient_id"])
        diffs = [r["difference"] for r in per_seed if r["patients"] == n and r["k_sites"] == k]
        summary.append({"patients": n, "k_sites": k, "seeds": len(frames), "auc_a": res.auc_a, "auc_b": res.auc_b,
                        "mean_difference": res.difference, "ci_low": res.ci[0], "ci_high": res.ci[1],
                        "seeds_a_better": sum(d > 0 for d in diffs), "min_difference": min(diffs),
                        "max_difference": max(diffs)})
    return pd.DataFrame(per_seed), pd.DataFrame(summary)


def format_comparison(a: Arm, b: Arm, per_seed: pd.DataFrame, summary: pd.DataFrame) -> str:
    lines = [f"AUC({a.label()}) - AUC({b.label()}), paired on the same validation images "
             "(95% CI: patients resampled whole)"]
    for r in per_seed.itertuples():
        lines.append(f"  n={r.patients:<3} K={r.k_sites} seed={r.seed}: {r.auc_a:.3f} vs {r.auc_b:.3f}  "
                     f"diff {r.difference:+.3f} [{r.ci_low:+.3f}, {r.ci_high:+.3f}]")
    lines.append("mean over seeds (CI of the mean under validation-set resampling):")
    for r in summary.itertuples():
        lines.append(f"  n={r.patients:<3} K={r.k_sites}: {r.auc_a:.3f} vs {r.auc_b:.3f}  mean diff "
                     f"{r.mean_difference:+.3f} [{r.ci_low:+.3f}, {r.ci_high:+.3f}]  A better in "
                     f"{r.seeds_a_better}/{r.seeds} seeds (per-seed {r.min_difference:+.3f}..{r.max_difference:+.3f})")
    return "\n".join(lines)
