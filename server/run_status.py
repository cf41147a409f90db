"""The live state of a run, read from what the ServerApp writes: events.jsonl, status.json, metrics.json.

`RunReader(root).status(flower_nodes)` is the `GET /api/status` document of the coordinator page:
run, round, rounds, phase, sites (name, online, last_seen, state, examples) and the history of
pooled/per-site AUC and the operating point. Reading never blocks the round loop: the files are
written atomically (status, metrics) or appended line by line (events), and a half-written last
line is left for the next read.
"""

from __future__ import annotations

import json
import math
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class _Node:
    state: str = "connected"
    since: float = 0.0


@dataclass
class SiteTracker:
    """Which node is which site and what each last did, from the run's events (all launches)."""

    node_site: dict[int, str] = field(default_factory=dict)
    nodes: dict[int, _Node] = field(default_factory=dict)
    last_seen: dict[str, float] = field(default_factory=dict)
    examples: dict[str, int] = field(default_factory=dict)
    in_round: set[int] = field(default_factory=set)  # nodes the round loop last sent work to
    missing: set[int] = field(default_factory=set)

    def _set(self, node: Any, state: str, when: float) -> None:
        if isinstance(node, int):
            self.nodes.setdefault(node, _Node()).state = state
            self.nodes[node].since = when

    def apply(self, ev: dict[str, Any]) -> None:
        kind, rnd, when = ev.get("event"), ev.get("round"), float(ev.get("time", 0.0))
        if kind in ("round_start", "evaluate_start"):
            self.in_round = {int(n) for n in ev.get("nodes", [])}
            self.missing -= self.in_round
            doing = "training" if kind == "round_start" else "evaluating"
            for node in self.in_round:
                self._set(node, f"{doing} (round {rnd})", when)
        elif kind in ("site_reply", "site_rejected"):
            node, site = ev.get("node"), str(ev.get("site", ""))
            if isinstance(node, int) and site and not site.startswith("node-"):
                self.node_site[node] = site
            self.last_seen[site] = when
            if kind == "site_reply":
                self._set(node, f"{'trained' if ev.get('kind') == 'train' else 'evaluated'} round {rnd}", when)
                if ev.get("kind") == "train":
                    self.examples[site] = int(ev.get("examples", 0))
            else:
                self._set(node, f"rejected in round {rnd} {ev.get('kind')}: {ev.get('reason')}", when)
        elif kind == "site_missing":
            self.missing.add(int(ev["node"]))
            self._set(ev.get("node"), f"no reply in round {rnd} {ev.get('kind')}: {ev.get('reason')}", when)
        elif kind == "done":
            for node in self.nodes.values():
                node.state, node.since = "finished", when

    def name(self, node: int) -> str:
        return self.node_site.get(node, f"node-{node}")

    def sites(self, flower_nodes: dict[int, str] | None) -> list[dict[str, Any]]:
        """One entry per site name (a restarted site has a new node id); Flower's node list, when
        given, says who is online now, else the round loop's last view does."""
        by_name: dict[str, list[int]] = {}
        for node in set(self.nodes) | set(flower_nodes or {}):
            if node in self.node_site or node in self.nodes or (flower_nodes or {}).get(node) == "online":
                by_name.setdefault(self.name(node), []).append(node)
        out = []
        for name, nodes in sorted(by_name.items()):
            latest = max(nodes, key=lambda n: self.nodes.get(n, _Node()).since)
            out.append({
                "name": name,
                "online": self._online(nodes, flower_nodes),
                "last_seen": self.last_seen.get(name),
                "state": self.nodes.get(latest, _Node()).state,
                "examples": self.examples.get(name),
                "nodes": sorted(nodes),
            })
        return out

    def _online(self, nodes: list[int], flower_nodes: dict[int, str] | None) -> bool | None:
        if flower_nodes is not None:
            return any(flower_nodes.get(n) == "online" for n in nodes)
        if any(n in self.in_round and n not in self.missing for n in nodes):
            return True
        return False if any(n in self.missing for n in nodes) else None


@dataclass
class _Progress:
    phase: str = "starting"
    since: float = 0.0
    round: int = 0
    rounds: int | None = None
    completed: int = 0
    run_id: int | None = None
    fab_hash: str = ""


def _progress(events: list[dict[str, Any]], launch_id: str | None) -> _Progress:
    """Phase and round of the current launch (a resumed run keeps earlier launches' events)."""
    p = _Progress()
    phases = {"started": "starting", "resumed": "resuming", "waiting": "waiting for sites", "round_start": "training",
              "evaluate_start": "evaluating", "round_end": "round done", "round_retry": "retrying the round",
              "done": "completed", "failed": "failed"}
    for ev in events:
        kind = ev.get("event")
        if kind == "round_end":
            p.completed = max(p.completed, int(ev.get("round", 0)))
        if (launch_id and ev.get("launch_id") != launch_id) or kind not in phases:
            continue
        p.phase, p.since = phases[kind], float(ev.get("time", 0.0))
        if kind == "started":
            p.rounds, p.run_id, p.fab_hash = ev.get("rounds"), ev.get("run_id"), ev.get("fab_hash") or ""
            p.round = max(int(ev.get("first_round", 1)) - 1, 0)
        elif kind == "waiting":
            p.phase = f"waiting for sites ({ev.get('connected')}/{ev.get('need')} connected)"
        if isinstance(ev.get("round"), int):
            p.round = ev["round"]
    return p


def _site_history(row: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    names = {k[len(prefix):] for k in row for prefix in ("auc_", "sens_", "spec_") if k.startswith(prefix)}
    return {name: {m: _num(row.get(f"{m}_{name}")) for m in ("auc", "sens", "spec")} for name in sorted(names)}


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def history_of(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """metrics.json rows -> the page's history: one entry per global model (its pooled and per-site AUC,
    operating point, and the message that evaluated it: `round r+1` or `final`; None until then)."""
    return [{"round": int(r["round"]), "evaluated_by": r.get("evaluated_by") or None,
             "pooled_auc": _num(r.get("pooled_auc")), "threshold": _num(r.get("threshold")),
             "sens": _num(r.get("sens")), "spec": _num(r.get("spec")), "sites": _site_history(r)} for r in rows]


class _Tail:
    """Incremental reader of an append-only JSON-lines file (restarts when the file is replaced)."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset, self.inode, self.records = path, 0, None, []

    def read(self) -> list[dict[str, Any]]:
        try:
            st = self.path.stat()
        except OSError:
            self.offset, self.inode, self.records = 0, None, []
            return self.records
        if st.st_ino != self.inode or st.st_size < self.offset:
            self.offset, self.inode, self.records = 0, st.st_ino, []
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            for raw in fh:
                if not raw.endswith(b"\n"):
                    break  # being written
                self.offset += len(raw)
                try:
                    self.records.append(json.loads(raw))
                except json.JSONDecodeError:
                    continue
        return self.records


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _target(root: Path) -> str | None:
    """The operating-point target this run uses, as words (from its run config)."""
    from mammo_fl.server.settings import FederationSettings

    try:
        config = tomllib.loads((root / "run_config.toml").read_text(encoding="utf-8"))
        return FederationSettings.from_run_config(config).operating_target().describe()
    except Exception:  # noqa: BLE001 - no or a bad run config: the page shows "-" instead
        return None


class RunReader:
    """The run folder as the coordinator page sees it."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.events = _Tail(self.root / "events.jsonl")

    def status(self, flower_nodes: dict[int, str] | None = None) -> dict[str, Any]:
        events = self.events.read()
        status = _read_json(self.root / "status.json") or {}
        rows = _read_json(self.root / "metrics.json") or []
        tracker = SiteTracker()
        for ev in events:
            tracker.apply(ev)
        p = _progress(events, status.get("launch_id"))
        phase = status.get("status") if status.get("status") in ("completed", "failed") else p.phase
        return {
            "run": self.root.name,
            "run_id": p.run_id if p.run_id is not None else status.get("run_id"),
            "status": status.get("status", "starting"),
            "reason": status.get("reason"),
            "round": p.round,
            "rounds": p.rounds if p.rounds is not None else status.get("rounds"),
            "completed_rounds": p.completed,
            "phase": phase,
            "phase_since": p.since or None,
            "target": _target(self.root),
            "online_source": "flower" if flower_nodes is not None else "events",
            "sites": tracker.sites(flower_nodes),
            "history": history_of(rows if isinstance(rows, list) else []),
            "updated": time.time(),
        }
