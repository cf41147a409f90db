"""FedBN at a site: its own BatchNorm weights/statistics, kept in its state dir and never sent.

They replace the global ones before evaluation and training (client/session.py does the work of
a round; this module only keeps the site's BatchNorm state between rounds).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mammo_fl.client.site import SiteInfo
from mammo_fl.common.federation import protocol as P
from mammo_fl.common.federation.round_config import RoundConfig


def fedbn_path(site: SiteInfo, rc: RoundConfig) -> Path:
    return site.state_dir / "fedbn" / f"{rc.fed_id}.pt"


def apply_local_bn(site: SiteInfo, rc: RoundConfig, model: Any) -> None:
    """Overwrite the global BatchNorm entries with this site's own (if it has trained before)."""
    import torch

    path = fedbn_path(site, rc)
    if rc.fedbn and path.exists():
        local = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(local, strict=False)


def save_local_bn(site: SiteInfo, rc: RoundConfig, model: Any) -> None:
    import torch

    prefixes = P.batchnorm_prefixes(model)
    bn = {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if P.is_batchnorm_key(k, prefixes)}
    path = fedbn_path(site, rc)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(bn, tmp)
    tmp.replace(path)
