"""The transfer-curve plot: validation AUC against training patients, one line per method."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: no display on servers or in CI
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from mammo_fl.simulations.results import METHODS, PAPER_TABLE4, column_label  # noqa: E402

STYLE = {
    "none": {"color": "0.45", "linestyle": ":", "marker": "x"},
    "pooled": {"color": "black", "linestyle": "-", "marker": "o"},
    "federated": {"linestyle": "-", "marker": "s"},
    "local": {"linestyle": "--", "marker": "v"},
}


def _paper_band(ax: plt.Axes, sizes: list[int]) -> None:
    """The paper's Table 4 range (four models, real INbreast) at the sizes it reports, for reference."""
    xs = [n for n in sorted(PAPER_TABLE4) if sizes and min(sizes) <= n <= max(sizes)]
    if not xs:
        return
    if len(xs) == 1:  # one size (the quick preset): a short band around it, so it stays visible
        (n,) = xs
        xs, low, high = [n - 2, n + 2], [PAPER_TABLE4[n][0]] * 2, [PAPER_TABLE4[n][1]] * 2
    else:
        low = [PAPER_TABLE4[n][0] for n in xs]
        high = [PAPER_TABLE4[n][1] for n in xs]
    ax.fill_between(xs, low, high, color="tab:orange", alpha=0.18, linewidth=0,
                    label="Shen et al. 2019 Table 4 (INbreast, 4 models)")
    ax.plot(xs, high, color="tab:orange", alpha=0.5, linewidth=0.8)
    ax.plot(xs, low, color="tab:orange", alpha=0.5, linewidth=0.8)


def plot_transfer_curves(results: pd.DataFrame, path: Path, title: str = "") -> Path:
    """Mean AUC ± sd over seeds per method (`local`: mean over sites and seeds, spread as error bars),
    with the paper's Table 4 range as a band."""
    ok = results[results["status"] == "ok"] if "status" in results.columns else results
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    keys = sorted(
        {(m, int(k)) for m, k in zip(ok["method"], ok["k_sites"])},
        key=lambda mk: (METHODS.index(mk[0]) if mk[0] in METHODS else 99, mk[1]),
    )
    palette = plt.get_cmap("tab10")
    for i, (method, k) in enumerate(keys):
        rows = ok[(ok["method"] == method) & (ok["k_sites"] == k)]
        stats = rows.groupby("patients")["auc"].agg(["mean", "std", "count"]).reset_index()
        style = dict(STYLE.get(method, {}))
        style.setdefault("color", palette(i % 10))
        ax.errorbar(
            stats["patients"], stats["mean"], yerr=stats["std"].fillna(0.0),
            label=column_label(method, k), capsize=3, linewidth=1.5, markersize=5, **style,
        )
    _paper_band(ax, sorted(int(n) for n in ok["patients"].unique()))
    ax.axhline(0.5, color="0.8", linewidth=0.8)
    ax.set_xlabel("training patients (fine-tuning set)")
    ax.set_ylabel("validation AUC (per image)")
    ax.set_title(title or "Transfer curves on the fixed validation set")
    if len(ok):
        ax.set_xticks(sorted(ok["patients"].unique()))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
