"""A site's own state and limits around a round's work (client/session.py does the work itself).

FedBN: the site's BatchNorm weights/statistics, kept in its state dir and never sent; they replace
the global ones before evaluation and training. The site's optimiser state (Adam's moments, with
`local-optimizer-state`), kept there too and never sent. And the site's minimum of validation patients per
class below which it sends no histogram (a histogram of a handful of patients discloses them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mammo_fl.client.site import SiteInfo
from mammo_fl.common.federation import protocol as P
from mammo_fl.common.federation.round_config import FED_ID, RoundConfig
from mammo_fl.common.utils.atomic import atomic_path
from mammo_fl.common.utils.errors import ConfigError


def local_state_path(site: SiteInfo, rc: RoundConfig, kind: str) -> Path:
    """The site's own `kind` state (fedbn | optimizer) for this federation; `fed-id` comes from the
    server, so it is checked again here (RoundConfig.from_record already refuses one that could leave
    the folder)."""
    if not FED_ID.match(rc.fed_id):
        raise ConfigError("round config: fed-id must be 1-64 letters, digits, '_' or '-'")
    return site.state_dir / kind / f"{rc.fed_id}.pt"


def fedbn_path(site: SiteInfo, rc: RoundConfig) -> Path:
    return local_state_path(site, rc, "fedbn")


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
    with atomic_path(path) as tmp:
        torch.save(bn, tmp)


def load_local_optimizer(site: SiteInfo, rc: RoundConfig) -> dict[str, Any] | None:
    """This site's optimiser state from its last round of this federation, or None (first round, or the
    federation does not keep it). An unreadable file means a fresh optimiser, not a failed round."""
    import pickle

    import torch

    path = local_state_path(site, rc, "optimizer")
    if not rc.finetune.local_optimizer_state or not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError):
        return None


def save_local_optimizer(site: SiteInfo, rc: RoundConfig, state: dict[str, Any]) -> None:
    """Write it (0600, atomically); another federation's optimiser state is of no further use (a model's
    worth of moments, twice), so it goes."""
    import torch

    path = local_state_path(site, rc, "optimizer")
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    drop_other_federations(path)


def drop_other_federations(path: Path) -> None:
    """Remove the files beside `path` of its kind (suffix): state of federations the site has left."""
    for old in path.parent.glob(f"*{path.suffix}"):
        if old != path:
            old.unlink(missing_ok=True)


def patients_per_class(images: Any) -> tuple[int, int]:
    """(negative, positive) patients of an image table; a patient is positive if any image is."""
    per_patient = images.groupby(images["patient_id"].astype(str))["label"].max().astype(int)
    return int((per_patient == 0).sum()), int((per_patient == 1).sum())


def check_evaluable(val_patients: tuple[int, int], min_per_class: int) -> None:
    """A histogram of a handful of patients discloses each one's score and label: refuse to send it.

    `val_patients` = (negative, positive) validation patients (`patients_per_class`)."""
    neg, pos = val_patients
    if min(neg, pos) < min_per_class:
        from mammo_fl.client.policy import SiteRefusal

        raise SiteRefusal(P.TOO_SMALL, f"validation split has {neg} negative / {pos} positive patient(s); "
                                       f"the site sends histograms only from {min_per_class} per class")
