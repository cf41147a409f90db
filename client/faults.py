"""Test-only fault injection: a site that misbehaves on purpose (tests, robustness experiments).

A deployed site chooses its own fault (`mammo-client --test-fault FAULT`, hidden from --help, written
to the SuperNode's node config as `test-fault`). In a simulation the run config key `test-faults`
("SITE=FAULT;SITE=FAULT") names the faulty virtual sites; a deployed site never reads it, so a
coordinator cannot make a real hospital misbehave. Faults act last, on what leaves the site (after
DP clipping: a malicious site would not clip), so the coordinator's screening is what stops them.

FAULT: `nan` (a NaN in the first float weight), `delay:S` (sleep S seconds before replying),
`hold:DIR` (hold the round-r training reply until DIR/round-r exists), `scale:F` (the update w - w_global multiplied by F), `claim-examples:N` (reply num-examples = N).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from mammo_fl.common.utils.errors import ConfigError

KINDS = ("nan", "delay", "hold", "scale", "claim-examples")


@dataclass(frozen=True)
class Fault:
    kind: str  # "" = none
    value: float = 0.0

    @property
    def changes_update(self) -> bool:
        """The weights themselves are altered (after DP clipping: a malicious site would not clip)."""
        return self.kind in ("nan", "scale")


NO_FAULT = Fault("")


def parse_fault(spec: str) -> Fault:
    """`scale:1000` -> Fault('scale', 1000.0); a one-line ConfigError for anything else."""
    spec = spec.strip()
    if not spec:
        return NO_FAULT
    kind, _, raw = spec.partition(":")
    if kind not in KINDS:
        raise ConfigError(f"test fault {spec!r}: unknown kind {kind!r}; use one of {', '.join(KINDS)}")
    if kind == "nan":
        if raw:
            raise ConfigError(f"test fault {spec!r}: nan takes no value")
        return Fault("nan")
    if kind == "hold":  # the reply waits in client/app.py; nothing here changes what is sent
        if not raw:
            raise ConfigError(f"test fault {spec!r}: hold needs a folder, e.g. hold:/tmp/release")
        return Fault("hold")
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"test fault {spec!r}: {kind} needs a number, e.g. {kind}:10") from None
    if kind in ("delay", "claim-examples") and value < 0:
        raise ConfigError(f"test fault {spec!r}: {kind} must be >= 0")
    if kind == "claim-examples" and not value.is_integer():
        raise ConfigError(f"test fault {spec!r}: claim-examples needs an integer")
    return Fault(kind, value)


def simulation_faults(run_config: Mapping[str, Any]) -> dict[str, str]:
    """`test-faults = "site_02=scale:1000;site_00=nan"` -> {site: fault spec} (each spec validated)."""
    out: dict[str, str] = {}
    for item in str(run_config.get("test-faults", "") or "").split(";"):
        if not item.strip():
            continue
        site, sep, spec = item.partition("=")
        if not sep or not site.strip():
            raise ConfigError(f"test-faults entry {item!r}: expected SITE=FAULT")
        parse_fault(spec)
        out[site.strip()] = spec.strip()
    return out


def apply_update_fault(fault: Fault, sent: dict[str, np.ndarray],
                       received: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The weights a faulty site sends instead of `sent` (unchanged for other faults)."""
    floats = [k for k, v in sent.items() if np.issubdtype(v.dtype, np.floating)]
    out = dict(sent)
    if fault.kind == "nan" and floats:
        out[floats[0]] = sent[floats[0]].copy()
        out[floats[0]].flat[0] = np.nan
    elif fault.kind == "scale":
        for key in floats:
            glob = np.asarray(received[key], dtype=np.float64)
            out[key] = (glob + fault.value * (sent[key].astype(np.float64) - glob)).astype(sent[key].dtype)
    return out


def claimed_examples(fault: Fault, num_examples: int) -> int:
    return int(fault.value) if fault.kind == "claim-examples" else int(num_examples)
