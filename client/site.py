"""A hospital site: who it is, where its data and state live, and its local train/val split.

Deployment: the SuperNode's node config carries `site` and `data-dir` (written by mammo-client),
optionally `state-dir`. Simulation: node config has `partition-id`; the site folder is the
`partition-id`-th sorted subfolder of run config `sites-dir`. The state dir (default
DATA/.mammo-fl) holds the preprocessing cache, the saved split, FedBN state and the audit log.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mammo_fl.client.faults import simulation_faults
from mammo_fl.common.utils.atomic import atomic_path
from mammo_fl.common.utils.errors import ConfigError, DataError

STATE_SUBDIR = ".mammo-fl"
SPLIT_FILE = "split.csv"


@dataclass(frozen=True)
class SiteInfo:
    name: str
    data_dir: Path
    state_dir: Path
    node_config: dict[str, Any]

    @property
    def fault(self) -> str:
        """Test-only fault injection chosen by the site itself (node config `test-fault`)."""
        return str(self.node_config.get("test-fault", ""))


def site_folders(sites_dir: Path) -> list[Path]:
    return sorted(p for p in sites_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def resolve_site(node_config: dict[str, Any], run_config: dict[str, Any]) -> SiteInfo:
    """The site this ClientApp serves, from the SuperNode's node config (or simulation partition)."""
    nc = dict(node_config)
    if "data-dir" in nc:
        data_dir = Path(str(nc["data-dir"])).expanduser()
        name = str(nc.get("site") or data_dir.name)
    elif "partition-id" in nc:
        sites_dir = str(run_config.get("sites-dir", "") or "")
        if not sites_dir:
            raise ConfigError("simulation site needs run config sites-dir (folder of site folders)")
        folders = site_folders(Path(sites_dir))
        pid = int(nc["partition-id"])
        if pid >= len(folders):
            raise ConfigError(f"partition-id {pid} but {sites_dir} has only {len(folders)} site folder(s)")
        data_dir = folders[pid]
        name = data_dir.name
        fault = simulation_faults(run_config).get(name)  # test-only; deployed sites choose their own
        if fault:
            nc["test-fault"] = fault
    else:
        raise ConfigError("node config has neither data-dir (deployment) nor partition-id (simulation)")
    state = Path(str(nc["state-dir"])).expanduser() if nc.get("state-dir") else data_dir / STATE_SUBDIR
    return SiteInfo(name=name, data_dir=data_dir, state_dir=state, node_config=nc)


def load_site_images(site: SiteInfo) -> Any:
    """The site's validated image table (image_id, image_path, patient_id, label, ...)."""
    from mammo_fl.common.imaging.adapters.manifest import read_manifest

    if not site.data_dir.is_dir():
        raise DataError(site.data_dir, "site data folder does not exist")
    result = read_manifest(site.data_dir)
    images = getattr(result, "images", result)
    for col in ("image_id", "image_path", "patient_id", "label"):
        if col not in images.columns:
            raise DataError(site.data_dir, f"site image table lacks column {col!r}")
    if images.empty:
        raise DataError(site.data_dir, "site manifest lists no images")
    return images


def split_patients_locally(images: Any, val_fraction: float, seed: int) -> dict[str, str]:
    """Patient -> train|val, stratified by patient label (1 if any image is malignant)."""
    from mammo_fl.common.imaging.splits import patient_labels, stratified_holdout

    return stratified_holdout(patient_labels(images), val_fraction, seed) if len(images) else {}


def load_or_make_split(site: SiteInfo, images: Any, val_fraction: float, seed: int) -> Any:
    """The saved split (patient_id, split); patients new since it was made are split with the same rule.

    Saving it keeps a site's validation patients fixed across rounds, runs and restarts.
    """
    import pandas as pd

    path = site.state_dir / SPLIT_FILE
    patients = set(images["patient_id"].astype(str))
    saved: dict[str, str] = {}
    if path.exists():
        try:
            table = pd.read_csv(path, dtype=str)
            saved = dict(zip(table["patient_id"], table["split"], strict=True))
        except (ValueError, KeyError, pd.errors.ParserError) as exc:
            raise DataError(path, f"unreadable split file ({exc}); delete it to re-split") from None
    new = patients - set(saved)
    if new or not path.exists():
        fresh = split_patients_locally(images[images["patient_id"].astype(str).isin(new)], val_fraction, seed)
        saved.update(fresh)
        site.state_dir.mkdir(parents=True, exist_ok=True)
        table = pd.DataFrame(sorted(saved.items()), columns=["patient_id", "split"])
        with atomic_path(path) as tmp:
            table.to_csv(tmp, index=False)
    return pd.DataFrame({"patient_id": list(saved), "split": list(saved.values())})


def site_subsets(site: SiteInfo, images: Any, val_fraction: float, seed: int) -> tuple[Any, Any]:
    """(train images, val images) for this site."""
    split = load_or_make_split(site, images, val_fraction, seed)
    which = dict(zip(split["patient_id"], split["split"], strict=True))
    tag = images["patient_id"].astype(str).map(which)
    return images[tag == "train"].reset_index(drop=True), images[tag == "val"].reset_index(drop=True)
