"""The coordinator's safeguards in one object for the round loop: screening, DP aggregation, the
privacy ledger, and their state in the run folder (restored by --resume).

Run-folder files: `screening_state.json` (the num-examples each site declared when it joined, and
the robust strategy's parameters; written with the round commit, before state.json) and
`privacy_ledger.json` (every noised release; written as soon as the release exists).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mammo_fl.common.utils.errors import ConfigError, MammoError
from mammo_fl.server import privacy
from mammo_fl.common.utils.atomic import atomic_write_text
from mammo_fl.server.rundir import RunDir
from mammo_fl.server.screening import (
    STATS,
    WEIGHTS,
    ScreenResult,
    invalid_model_reason,
    register,
    screen_examples,
    screen_histograms,
    screen_norms,
)
from mammo_fl.server.settings import FederationSettings
from mammo_fl.server.strategy import aggregate
from mammo_fl.server.validate import Rejected, Screened, site_of

SCREENING_STATE = "screening_state.json"
PRIVACY_LEDGER = "privacy_ledger.json"


def strategy_params(s: FederationSettings) -> dict[str, Any]:
    """What a resumed run must not change about its robust strategy."""
    if s.strategy == "fedtrimmedavg":
        return {"trimmed-beta": s.trimmed_beta}
    if s.strategy == "krum":
        return {"krum-malicious": s.krum_malicious}
    return {}


@dataclass
class Safeguards:
    settings: FederationSettings
    rundir: RunDir
    registry: dict[str, int] = field(default_factory=dict)  # site -> num-examples declared at join
    ledger: privacy.PrivacyLedger = field(default_factory=privacy.PrivacyLedger)

    # -- state ---------------------------------------------------------------------------------
    @property
    def state_file(self) -> Path:
        return self.rundir.root / SCREENING_STATE

    @property
    def ledger_file(self) -> Path:
        return self.rundir.root / PRIVACY_LEDGER

    @classmethod
    def open(cls, s: FederationSettings, rundir: RunDir, resume: bool) -> Safeguards:
        guards = cls(s, rundir)
        if s.dp.enabled and not s.fedbn:
            logging.getLogger("mammo.server").warning(
                "dp: BatchNorm running statistics are part of the clipped update and usually dominate its norm "
                "(activation units); fedbn = true keeps them at the sites (docs/federation.md)")
        if not resume:
            guards.state_file.unlink(missing_ok=True)
            guards.ledger_file.unlink(missing_ok=True)
            return guards
        if guards.state_file.exists():
            state = json.loads(guards.state_file.read_text())
            saved = state.get("strategy_params", {})
            if saved != strategy_params(s):
                raise ConfigError(f"cannot resume with {strategy_params(s)}: the run used {saved}")
            guards.registry = {str(k): int(v) for k, v in state.get("registry", {}).items()}
        guards.ledger = privacy.PrivacyLedger.load(guards.ledger_file)
        return guards

    def state(self) -> dict[str, Any]:
        """A snapshot for the round's commit (written in the background while the next round runs)."""
        return {"registry": dict(self.registry), "strategy_params": strategy_params(self.settings)}

    def commit(self, state: dict[str, Any] | None = None) -> None:
        """Written with the round's checkpoint, before state.json (the resume marker)."""
        atomic_write_text(self.state_file, json.dumps(state or self.state(), indent=1, sort_keys=True))

    def restored(self) -> dict[str, int]:
        return {"registered_sites": len(self.registry), "privacy_releases": len(self.ledger.releases)}

    # -- what arrived ----------------------------------------------------------------------------
    def witness(self, rnd: int, kind: str, replies: dict[int, Any], names: dict[int, str] | None = None) -> None:
        """Log the SHA-256 object id of every reply's content: the same digest the site's audit log
        records as `sent.sha256`, so the two records can be matched entry by entry (`names`: registered
        node -> site names, server/site_nodes.py)."""
        digests = {site_of(reply, node, names): reply.content.object_id
                   for node, reply in sorted(replies.items()) if not reply.has_error()}
        if digests:
            self.rundir.event("reply_digests", round=rnd, kind=kind, digests=digests)

    # -- training replies ----------------------------------------------------------------------
    def screen_train(self, accepted: list[Screened], global_arrays: dict[str, np.ndarray]) -> ScreenResult:
        """num-examples first (rejects leave the norm median), then update norms."""
        sc, dp = self.settings.screening, self.settings.dp
        examples = screen_examples(accepted, sc, self.registry)
        dp_clip = dp.clip_norm if dp.enabled and dp.noise_at == "server" else None
        norms = screen_norms(examples.accepted, global_arrays, sc, dp_clip)
        norms.rejected = examples.rejected + norms.rejected
        norms.notes = examples.notes + norms.notes
        register(norms.accepted, self.registry)
        return norms

    def aggregate(self, strategy: Any, rnd: int, global_arrays: dict[str, np.ndarray],
                  accepted: list[Screened]) -> dict[str, np.ndarray]:
        """New global weights (DP noise when on); never a non-finite model or a negative BN variance."""
        dp = self.settings.dp
        if dp.enabled and dp.noise_at == "server":
            new = privacy.dp_aggregate(strategy, rnd, global_arrays, accepted, dp)
        else:
            self._warn_if_trimming_nothing(len(accepted))
            new = aggregate(strategy, rnd, global_arrays, accepted)
        why = invalid_model_reason(new)
        if why is not None:
            raise MammoError(f"round {rnd}: the aggregate of {len(accepted)} update(s) is not a usable model ({why}); "
                             "nothing was checkpointed. Turn screening on or use a robust strategy, then --resume")
        if dp.enabled:
            self.ledger.record(rnd, privacy.UPDATE, privacy.update_multiplier(dp), len(accepted))
            self.ledger.save(self.ledger_file)
        return new

    def _warn_if_trimming_nothing(self, n: int) -> None:
        s = self.settings
        if s.strategy == "fedtrimmedavg" and int(s.trimmed_beta * n) == 0:
            logging.getLogger("mammo.server").warning(
                "fedtrimmedavg: trimmed-beta %s cuts nothing at %d sites (plain mean)", s.trimmed_beta, n)

    def screening_fields(self, result: ScreenResult, rejected: list[Rejected]) -> dict[str, Any]:
        """metrics.csv columns: who was clipped/capped/rejected and why, and each site's update norm."""
        fields: dict[str, Any] = {
            "clipped_sites": " | ".join(f"{n.site}: {n.detail}" for n in result.notes),
            "rejected_sites": " | ".join(f"{r.site}: {r.reason}" for r in rejected),
        }
        for group, prefix in ((WEIGHTS, "norm"), (STATS, "bnstats_norm")):
            if group in result.bounds:
                bound = result.bounds[group]
                fields[f"{prefix}_bound"] = math.nan if bound is None else bound
            for site, norms in sorted(result.norms.items()):
                if group in norms:
                    fields[f"{prefix}_{site}"] = norms[group]
        return fields

    # -- evaluation replies --------------------------------------------------------------------
    def screen_eval(self, rnd: int, accepted: list[Screened]) -> tuple[list[Screened], list[Rejected]]:
        s = self.settings
        if s.dp.histogram_noise > 0 and accepted:
            self.ledger.record(rnd, privacy.HISTOGRAM, s.dp.histogram_noise, len(accepted))
            self.ledger.save(self.ledger_file)
        return screen_histograms(accepted, s.hist_bins, s.screening.max_examples)

    def privacy_fields(self) -> dict[str, Any]:
        """metrics.csv columns `epsilon` (model updates) and `hist_epsilon` (histograms, per image) at dp.delta."""
        dp = self.settings.dp
        out: dict[str, Any] = {}
        if dp.enabled:
            out["epsilon"] = self.ledger.epsilon(privacy.UPDATE, dp.delta)
            out["dp_delta"] = dp.delta
        if dp.histogram_noise > 0:
            out["hist_epsilon"] = self.ledger.epsilon(privacy.HISTOGRAM, dp.delta)
            out["dp_delta"] = dp.delta
        return {k: (math.nan if v is None else v) for k, v in out.items()}
