"""Result files of a transfer-curve experiment: the long CSV, the Table-4-like summary, run.json."""

from __future__ import annotations

import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from mammo_fl.common.utils.errors import DataError
from mammo_fl.common.utils.jsonable import write_json

# The required columns first (the public schema), then extras that make rows traceable.
RESULT_COLUMNS = ["patients", "method", "k_sites", "seed", "auc"]
EXTRA_COLUMNS = ["site", "images", "val_images", "seconds", "status"]
METHODS = ("none", "pooled", "federated", "local")
# Shen et al. 2019, Table 4: per-image validation AUC on INbreast after fine-tuning on n patients, range over
# the four models (reference only: real INbreast, ResNet50/VGG16 at 1152x896, 200 epochs).
PAPER_TABLE4: dict[int, tuple[float, float]] = {20: (0.87, 0.92), 30: (0.90, 0.94), 40: (0.93, 0.95),
                                               50: (0.93, 0.95), 60: (0.94, 0.95), 72: (0.95, 0.95)}
PAPER_COLUMN = "paper T4"


def result_row(
    patients: int,
    method: str,
    k_sites: int,
    seed: int,
    auc: float,
    *,
    site: str = "",
    images: int = 0,
    val_images: int = 0,
    seconds: float = 0.0,
    status: str = "ok",
) -> dict[str, Any]:
    return {
        "patients": int(patients), "method": method, "k_sites": int(k_sites), "seed": int(seed),
        "auc": float(auc), "site": site, "images": int(images), "val_images": int(val_images),
        "seconds": round(float(seconds), 2), "status": status,
    }


def append_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """Append rows as soon as a job ends, so an interrupted run keeps what it finished."""
    frame = pd.DataFrame(rows, columns=RESULT_COLUMNS + EXTRA_COLUMNS)
    frame.to_csv(path, mode="a", header=not path.exists() or path.stat().st_size == 0, index=False)


def read_results(path: Path) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path, keep_default_na=False, na_values=[""], dtype={"site": str})
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DataError(path, f"cannot read results: {exc}") from None
    missing = set(RESULT_COLUMNS) - set(frame.columns)
    if missing:
        raise DataError(path, f"results lack column(s) {sorted(missing)}")
    frame["site"] = frame["site"].fillna("")
    return frame


def column_label(method: str, k_sites: int) -> str:
    if method in ("federated", "local"):
        return f"{method} K={k_sites}"
    return method


def _mean_sd(values: pd.Series) -> str:
    values = values.dropna()
    if values.empty:
        return "failed"
    if len(values) == 1:
        return f"{values.iloc[0]:.3f}"
    return f"{values.mean():.3f} ± {values.std(ddof=1):.3f}"


def paper_reference(patients: int) -> str:
    """The paper's Table 4 range at this training-set size ("-" where it has no row)."""
    low_high = PAPER_TABLE4.get(int(patients))
    if low_high is None:
        return "-"
    low, high = low_high
    return f"{low:.2f}" if low == high else f"{low:.2f}-{high:.2f}"


def summary_table(results: pd.DataFrame) -> pd.DataFrame:
    """Table-4 layout: one row per training-set size, one column per method (mean ± sd), and the
    paper's Table 4 range for reference.

    `local` pools the per-site AUCs over sites and seeds (the spread is across sites);
    the others are mean ± sd over seeds.
    """
    ok = results[results["status"] == "ok"] if "status" in results.columns else results
    columns = sorted(
        {(m, int(k)) for m, k in zip(results["method"], results["k_sites"])},
        key=lambda mk: (METHODS.index(mk[0]) if mk[0] in METHODS else 99, mk[1]),
    )
    rows = []
    for patients in sorted(results["patients"].unique()):
        at_size = results[results["patients"] == patients]
        row: dict[str, Any] = {"patients": int(patients)}
        images = at_size[at_size["method"] == "pooled"]["images"]
        row["images"] = int(images.median()) if len(images) else ""
        for method, k in columns:
            cell = at_size[(at_size["method"] == method) & (at_size["k_sites"] == k)]
            good = cell.loc[cell.index.isin(ok.index), "auc"]
            row[column_label(method, k)] = "-" if cell.empty else _mean_sd(good)
        row[PAPER_COLUMN] = paper_reference(patients)
        rows.append(row)
    return pd.DataFrame(rows)


def format_table(table: pd.DataFrame) -> str:
    return table.to_string(index=False)


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _git_commit(repo: Path) -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() or "unknown"


def _cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo; ARM kernels list none there, so then what platform
    reports, at least the architecture)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def environment_record() -> dict[str, Any]:
    """Versions and host facts that can change a result. The CPU's kind and torch's kernel level
    (AVX2, AVX512, ...) are among them: the same seed builds a different source model on another
    kind (docs/simulations.md, "The whole curve at 6 x 1, on a second CPU")."""
    import torch

    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": __import__("os").cpu_count(),
        "cpu": _cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cuda": torch.cuda.is_available(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "versions": {p: _version(p) for p in ("mammo-fl", "torch", "torchvision", "flwr", "ray", "numpy", "pandas")},
        "git_commit": _git_commit(Path(__file__).resolve().parent.parent),
        "argv": sys.argv,
    }


def write_run_record(path: Path, record: dict[str, Any]) -> None:
    """run.json: written after every job (atomically) so it always matches the CSV."""
    write_json(path, record, indent=2)
