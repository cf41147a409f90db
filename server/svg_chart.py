"""Geometry of the coordinator page's AUC-per-round chart, drawn as inline SVG by the template.

Pure numbers in, coordinates out: no chart library, nothing fetched by the browser, and the same
picture whether or not the page runs its refresh script.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

# Colour-blind-safe palette (Okabe-Ito), pooled in black.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#999999")
POOLED = "pooled"


@dataclass(frozen=True)
class Point:
    x: float
    y: float
    label: str


@dataclass(frozen=True)
class Series:
    name: str
    color: str
    pooled: bool
    points: list[Point]

    @property
    def path(self) -> str:
        return " ".join(f"{p.x:.1f},{p.y:.1f}" for p in self.points)


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    left: int
    top: int
    right: int
    bottom: int
    series: list[Series] = field(default_factory=list)
    x_ticks: list[tuple[float, str]] = field(default_factory=list)
    y_ticks: list[tuple[float, str]] = field(default_factory=list)


def site_colors(names: list[str]) -> dict[str, str]:
    """Colours in the given order (charted sites first keep the chart's colours)."""
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def auc_chart(history: list[dict[str, Any]], width: int = 640, height: int = 280) -> Chart | None:
    """Pooled and per-site AUC against the round; None before the first evaluated round."""
    values = [h["pooled_auc"] for h in history if _finite(h.get("pooled_auc"))]
    values += [s["auc"] for h in history for s in h["sites"].values() if _finite(s.get("auc"))]
    if not values:
        return None
    left, top, right, bottom = 48, 12, width - 12, height - 32
    rounds = [h["round"] for h in history]
    r0, r1 = min(rounds), max(rounds)
    y0 = min(0.5, math.floor(min(values) * 10) / 10)

    def x(r: int) -> float:
        return (left + right) / 2 if r1 == r0 else left + (r - r0) / (r1 - r0) * (right - left)

    def y(v: float) -> float:
        return bottom - (v - y0) / (1.0 - y0) * (bottom - top)

    def series(name: str, color: str, pooled: bool, pick: Any) -> Series:
        pts = [Point(x(h["round"]), y(v), f"{name}, round {h['round']}: AUC {v:.3f}")
               for h in history if _finite(v := pick(h))]
        return Series(name, color, pooled, pts)

    names = sorted({n for h in history for n in h["sites"]})
    colors = site_colors(names)
    out = [series(n, colors[n], False, lambda h, n=n: h["sites"].get(n, {}).get("auc")) for n in names]
    out.append(series(POOLED, "#000000", True, lambda h: h.get("pooled_auc")))
    step = max(1, math.ceil((r1 - r0 + 1) / 10))
    x_ticks = [(x(r), str(r)) for r in range(r0, r1 + 1, step)]
    y_ticks = [(y(v / 10), f"{v / 10:.1f}") for v in range(round(y0 * 10), 11)]
    return Chart(width, height, left, top, right, bottom, out, x_ticks, y_ticks)
