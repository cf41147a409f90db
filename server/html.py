"""The Jinja2 environment of the coordinator page and the run report (templates in server/templates/).

Autoescaping is on: site names, reasons and settings come from the run folder and are shown as text.
"""

from __future__ import annotations

import math
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2

TEMPLATE_DIR = Path(__file__).parent / "templates"


def num(value: Any, digits: int = 3) -> str:
    """A figure, or an en dash when there is none (None / NaN)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return "\u2013"
    return f"{value:.{digits}f}"


def toml_value(value: Any) -> str:
    """A setting as it is written in the TOML run config (true, 1e-05, "fedavg")."""
    import tomli_w

    return tomli_w.dumps({"v": value})[len("v = "):].strip()


def pct(value: Any) -> str:
    return "\u2013" if num(value) == "\u2013" else f"{100 * value:.1f}%"


def ago(stamp: Any, now: float | None = None) -> str:
    if not isinstance(stamp, (int, float)):
        return "never"
    secs = max(0.0, (now or time.time()) - stamp)
    if secs < 90:
        return f"{secs:.0f} s ago"
    if secs < 5400:
        return f"{secs / 60:.0f} min ago"
    return f"{secs / 3600:.1f} h ago"


def clock(stamp: Any) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp)) if isinstance(stamp, (int, float)) else "\u2013"


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATE_DIR), autoescape=True,
                             trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    env.filters.update(num=num, pct=pct, ago=ago, clock=clock, toml=toml_value)
    return env


def render(template: str, **context: Any) -> str:
    return environment().get_template(template).render(**context)
