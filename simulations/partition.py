"""Patient-level training subsets and virtual-site partitions.

Everything here works on a per-patient table (one row per patient) and is joined back
to image rows afterwards, so a patient's images never end up in two sites (cross-site
leakage would make federated results look better than they are).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mammo_fl.common.imaging.splits import shuffled_strata
from mammo_fl.common.utils.errors import ConfigError, DataError

SCHEMES = ("iid", "vendor", "label", "site")


def patient_table(images: pd.DataFrame) -> pd.DataFrame:
    """One row per patient: `patient_id, label, n_images` (+ `vendor`, `site` when present).

    A patient is positive if any of their images is; the vendor/site is the most
    frequent one among their images.
    """
    missing = {"patient_id", "label"} - set(images.columns)
    if missing:
        raise DataError(None, f"images table lacks column(s) {sorted(missing)}")
    grouped = images.groupby("patient_id", sort=True)
    table = pd.DataFrame(
        {
            "label": grouped["label"].max().astype(int),
            "n_images": grouped.size().astype(int),
        }
    )
    for column in ("vendor", "site"):
        if column in images.columns:
            table[column] = grouped[column].agg(lambda s: s.astype(str).mode().iloc[0])
    return table.reset_index()


def _labels(patients: pd.DataFrame) -> pd.Series:
    """The patient table's label column indexed by patient id (table order kept)."""
    return pd.Series(patients["label"].to_numpy(), index=patients["patient_id"].astype(str).to_numpy())


def _stratified_order(patients: pd.DataFrame, rng: np.random.Generator) -> list[str]:
    """A random patient order whose every prefix keeps the class ratio (nested subsets).

    Each class is shuffled, its members get evenly spaced ranks in (0, 1), and the
    classes are merged by rank, with a random tie-break.
    """
    keyed: list[tuple[float, float, str]] = []
    for _, ids in shuffled_strata(_labels(patients), rng):
        for i, pid in enumerate(ids):
            keyed.append(((i + 0.5) / len(ids), rng.random(), pid))
    keyed.sort()
    return [pid for _, _, pid in keyed]


def training_subset(patients: pd.DataFrame, n: int, seed: int) -> list[str]:
    """`n` training patients, stratified by label; subsets of one seed are nested (20 within 40 ...)."""
    if n <= 0:
        raise ConfigError(f"training subset size must be positive, got {n}")
    if n > len(patients):
        raise ConfigError(f"training subset of {n} patients requested but only {len(patients)} are available")
    order = _stratified_order(patients, np.random.default_rng([seed, 1]))
    return sorted(order[:n])


def _deal(ids: list[str], k: int, start: int, sizes: list[int]) -> dict[str, int]:
    """Deal ids to the k sites round-robin, starting at the currently smallest site."""
    out: dict[str, int] = {}
    for pid in ids:
        site = min(range(k), key=lambda s: (sizes[s], (s - start) % k))
        out[pid] = site
        sizes[site] += 1
    return out


def _partition_iid(patients: pd.DataFrame, k: int, rng: np.random.Generator) -> dict[str, int]:
    """Equal-sized sites with the same label mix: each class is dealt round-robin in turn
    (rarest class first), always to the emptiest site, so sizes and class counts differ by at most one."""
    out: dict[str, int] = {}
    sizes = [0] * k
    classes = sorted(patients.groupby("label"), key=lambda item: (len(item[1]), item[0]))
    for _, group in classes:
        ids = group["patient_id"].astype(str).to_numpy()
        ids = ids[rng.permutation(len(ids))]
        out.update(_deal(list(ids), k, int(rng.integers(k)), sizes))
    return out


def _partition_by_group(patients: pd.DataFrame, column: str, k: int, rng: np.random.Generator) -> dict[str, int]:
    """Sites follow a natural grouping (vendor profile, hospital).

    With at least k groups, whole groups go to sites (largest group to the emptiest
    site). With fewer groups than sites, a group's patients are shared by the sites
    that have that group as their home group, so every site holds a single group.
    """
    check_grouping(patients, column, k)
    groups = {str(g): sorted(frame["patient_id"].astype(str)) for g, frame in patients.groupby(column, sort=True)}
    names = sorted(groups, key=lambda g: (-len(groups[g]), g))
    out: dict[str, int] = {}
    if len(names) >= k:
        load = [0] * k
        for name in names:
            site = min(range(k), key=lambda s: (load[s], s))
            for pid in groups[name]:
                out[pid] = site
            load[site] += len(groups[name])
        return out
    # Fewer groups than sites: give bigger groups more sites, proportionally to size.
    total = sum(len(groups[g]) for g in names)
    share = {g: 1 for g in names}
    for _ in range(k - len(names)):
        best = max(names, key=lambda g: (len(groups[g]) / total) / share[g])
        share[best] += 1
    site = 0
    for name in names:
        members = [groups[name][i] for i in rng.permutation(len(groups[name]))]
        home = list(range(site, site + share[name]))
        for i, pid in enumerate(members):
            out[pid] = home[i % len(home)]
        site += share[name]
    return out


def check_grouping(patients: pd.DataFrame, column: str, k: int) -> None:
    """A vendor/site partition needs that column and, for k > 1, at least two of its values:
    with one scanner (or hospital) the "shifted" sites would silently be an IID split."""
    if column not in patients.columns:
        raise ConfigError(f"partition scheme {column!r} needs a {column!r} column in the images table")
    values = sorted(patients[column].astype(str).unique())
    if len(values) < 2 <= k:
        hint = " (a synthetic target gets several with target.vendors)" if column == "vendor" else ""
        raise ConfigError(f"partition {column!r} into {k} sites needs patients of >= 2 {column}s, "
                          f"the data has only {', '.join(values) or 'none'}{hint}")


def _partition_label_skew(patients: pd.DataFrame, k: int, rng: np.random.Generator, alpha: float) -> dict[str, int]:
    """Label skew: each class is spread over sites with Dirichlet(alpha) proportions."""
    out: dict[str, int] = {}
    for _, ids in shuffled_strata(_labels(patients), rng):
        props = rng.dirichlet([alpha] * k)
        cuts = np.round(np.cumsum(props)[:-1] * len(ids)).astype(int)
        for site, chunk in enumerate(np.split(np.asarray(ids), cuts)):
            for pid in chunk:
                out[str(pid)] = site
    # Dirichlet draws can leave a site empty: move one patient from the largest site.
    for site in range(k):
        if site not in out.values():
            sizes = pd.Series(out).value_counts()
            donor_site = int(sizes.idxmax())
            donor = sorted(p for p, s in out.items() if s == donor_site)[0]
            out[donor] = site
    return out


def partition_patients(
    patients: pd.DataFrame, k: int, scheme: str = "iid", seed: int = 0, alpha: float = 0.5
) -> dict[str, int]:
    """Assign every patient to one of `k` sites (0..k-1); deterministic for a seed.

    Schemes: `iid` (stratified, equal sizes), `vendor` (by vendor profile), `site`
    (by a given `site` column, e.g. from site manifests), `label` (Dirichlet label skew).
    """
    if scheme not in SCHEMES:
        raise ConfigError(f"unknown partition scheme {scheme!r}; known: {', '.join(SCHEMES)}")
    if k < 1:
        raise ConfigError(f"number of sites must be at least 1, got {k}")
    if k > len(patients):
        raise ConfigError(f"cannot split {len(patients)} patients into {k} sites")
    rng = np.random.default_rng([seed, 2, k])
    if scheme == "iid" or k == 1:
        assignment = _partition_iid(patients, k, rng)
    elif scheme in ("vendor", "site"):
        assignment = _partition_by_group(patients, scheme, k, rng)
    else:
        assignment = _partition_label_skew(patients, k, rng, alpha)
    check_partition(patients, assignment, k)
    return assignment


def check_partition(patients: pd.DataFrame, assignment: dict[str, int], k: int) -> None:
    """Every patient in exactly one site, every site non-empty (raises ConfigError)."""
    ids = set(patients["patient_id"].astype(str))
    if set(assignment) != ids:
        raise ConfigError("partition does not cover exactly the given patients")
    used = set(assignment.values())
    if used != set(range(k)):
        raise ConfigError(f"partition into {k} sites left site(s) {sorted(set(range(k)) - used)} empty")


def site_name(site: int) -> str:
    return f"site_{site:02d}"


def partition_frame(patients: pd.DataFrame, assignment: dict[str, int]) -> pd.DataFrame:
    """The saved form: `patient_id, site, label, n_images` (+ vendor)."""
    frame = patients.copy()
    frame["patient_id"] = frame["patient_id"].astype(str)
    frame["site"] = frame["patient_id"].map(lambda p: site_name(assignment[p]))
    columns = ["patient_id", "site", "label", "n_images"] + (["vendor"] if "vendor" in frame.columns else [])
    return frame[columns].sort_values(["site", "patient_id"]).reset_index(drop=True)


def site_groups(frame: pd.DataFrame, column: str = "vendor") -> dict[str, list[str]]:
    """{site: sorted distinct values of `column` among its patients} (which scanner each site got)."""
    if column not in frame.columns:
        return {}
    return {str(site): sorted(g[column].astype(str).unique()) for site, g in frame.groupby("site", sort=True)}


def save_partition(frame: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)


def load_partition(path: Path) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path, dtype={"patient_id": str, "site": str})
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DataError(path, f"cannot read partition: {exc}") from None
    if not {"patient_id", "site"} <= set(frame.columns):
        raise DataError(path, "partition file needs columns patient_id, site")
    return frame


def site_images(images: pd.DataFrame, partition: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Split image rows by the saved partition: {site name: images of its patients}."""
    site_of = dict(zip(partition["patient_id"].astype(str), partition["site"].astype(str)))
    pid = images["patient_id"].astype(str)
    rows = images[pid.isin(site_of)]
    return {
        name: frame.reset_index(drop=True)
        for name, frame in rows.groupby(pid[rows.index].map(site_of), sort=True)
    }
