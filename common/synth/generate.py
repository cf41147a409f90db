"""`generate_dataset`: plan a cohort, render every image (in parallel), write a layout."""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import shutil
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from tqdm import tqdm

from mammo_fl.common.utils.errors import ConfigError, DataError, MammoError
from mammo_fl.common.synth.layouts import cbis_ddsm, inbreast, manifest
from mammo_fl.common.synth.layouts.records import write_ground_truth
from mammo_fl.common.synth.plan import PlanOptions, plan_cbis, plan_inbreast, plan_site
from mammo_fl.common.synth.profiles import DEFAULT_PROFILE, VendorProfile, get_profile, site_profile
from mammo_fl.common.synth.render import ImageSpec, render_image

log = logging.getLogger(__name__)

LAYOUTS = {"cbis-ddsm": cbis_ddsm, "inbreast": inbreast, "manifest": manifest}
DEFAULT_DOMAIN = {"cbis-ddsm": "film", "inbreast": "ffdm", "manifest": "ffdm"}
DEFAULT_PREVALENCE = {"cbis-ddsm": 0.41, "inbreast": 0.3, "manifest": 0.3}
FILM_SIZE = (1280, 800)  # digitised film: a bit larger, DDSM-like aspect
FFDM_HEIGHT = 1152
MARKER = "ground_truth.csv"  # marks a folder as synth output (safe to overwrite)


@dataclass(frozen=True)
class SynthConfig:
    """All knobs of one synthetic dataset. `size` (H, W) overrides the native sizes."""

    layout: str
    out_dir: Path
    patients: int
    seed: int = 0
    domain: str | None = None  # film | ffdm | mixed (manifest only); default per layout
    sites: int = 1
    size: tuple[int, int] | None = None
    prevalence: float | None = None
    conspicuity: float = 1.0
    lesion_scale: float = 1.0
    secondary_signs: float = 0.0  # share of malignant images that also show skin thickening (image-level context)
    vendor: str | None = None  # force one vendor profile (cbis-ddsm / inbreast)
    vendors: tuple[str, ...] | None = None  # inbreast: a multi-vendor cohort, patients dealt over these profiles
    cbis_tree: str = "descriptive"  # descriptive (NBIA retriever) | classic (UID folders)
    site_names: tuple[str, ...] | None = None
    workers: int | None = None
    overwrite: bool = False
    progress: bool = True

    def validate(self) -> "SynthConfig":
        if self.layout not in LAYOUTS:
            raise ConfigError(f"unknown layout {self.layout!r}; expected one of {', '.join(LAYOUTS)}")
        if self.patients < 1:
            raise ConfigError(f"--patients must be >= 1 (got {self.patients})")
        if self.sites < 1:
            raise ConfigError(f"--sites must be >= 1 (got {self.sites})")
        if self.sites > 1 and self.layout != "manifest":
            raise ConfigError("--sites > 1 needs --layout manifest")
        if self.layout == "manifest" and self.patients < self.sites:
            raise ConfigError(f"{self.patients} patients cannot fill {self.sites} sites")
        domain = self.domain or DEFAULT_DOMAIN[self.layout]
        allowed = ("film", "ffdm", "mixed") if self.layout == "manifest" else ("film", "ffdm")
        if domain not in allowed:
            raise ConfigError(f"unknown domain {domain!r} for layout {self.layout}; expected {', '.join(allowed)}")
        if self.size is not None and (len(self.size) != 2 or min(self.size) < 64 or max(self.size) > 8192):
            raise ConfigError(f"size must be (height, width) between 64 and 8192 pixels (got {self.size})")
        prevalence = DEFAULT_PREVALENCE[self.layout] if self.prevalence is None else float(self.prevalence)
        if not 0.0 <= prevalence <= 1.0:
            raise ConfigError(f"prevalence must be in [0, 1] (got {prevalence})")
        if not 0.1 <= self.conspicuity <= 5.0:
            raise ConfigError(f"conspicuity must be in [0.1, 5] (got {self.conspicuity})")
        if not 0.0 <= self.secondary_signs <= 1.0:
            raise ConfigError(f"secondary_signs must be in [0, 1] (got {self.secondary_signs})")
        if self.cbis_tree not in ("descriptive", "classic"):
            raise ConfigError(f"cbis_tree must be descriptive or classic (got {self.cbis_tree!r})")
        if self.vendor is not None:
            get_profile(self.vendor)
        if self.vendors:
            self._check_vendors(domain)
        if self.site_names is not None and len(self.site_names) != self.sites:
            raise ConfigError(f"{len(self.site_names)} site names given for {self.sites} sites")
        return replace(self, domain=domain, prevalence=prevalence, out_dir=Path(self.out_dir))

    def _check_vendors(self, domain: str) -> None:
        if self.layout != "inbreast":
            raise ConfigError("vendors (a multi-vendor cohort) needs --layout inbreast; manifest sites get one each")
        if self.vendor is not None:
            raise ConfigError("give either vendor (one profile) or vendors (a mix), not both")
        if len(set(self.vendors)) != len(self.vendors):
            raise ConfigError(f"vendors lists a profile twice: {', '.join(self.vendors)}")
        for name in self.vendors:
            if get_profile(name).domain != domain:
                raise ConfigError(f"vendor profile {name!r} is not a {domain} profile")

    def names_of_sites(self) -> tuple[str, ...]:
        return self.site_names or tuple(f"site-{i + 1}" for i in range(self.sites))


def native_size(profile: VendorProfile, size: tuple[int, int] | None) -> tuple[int, int]:
    if size is not None:
        return int(size[0]), int(size[1])
    if profile.domain == "film":
        return FILM_SIZE
    return FFDM_HEIGHT, int(round(FFDM_HEIGHT * profile.aspect / 4.0)) * 4


def plan(config: SynthConfig) -> list[ImageSpec]:
    """The full list of images of a (validated) config, deterministic from its seed."""
    cfg = config
    if cfg.layout in ("cbis-ddsm", "inbreast"):
        profile = get_profile(cfg.vendor or DEFAULT_PROFILE[cfg.domain])
        h, w = native_size(profile, cfg.size)
        opts = PlanOptions(h, w, cfg.seed, cfg.prevalence, cfg.lesion_scale)
        if cfg.layout == "cbis-ddsm":
            return plan_cbis(cfg.patients, opts, profile)
        mix = [(get_profile(name), native_size(get_profile(name), cfg.size)) for name in cfg.vendors or ()]
        return plan_inbreast(cfg.patients, opts, profile, mix)
    images: list[ImageSpec] = []
    names = cfg.names_of_sites()
    base, rest = divmod(cfg.patients, cfg.sites)
    for i, name in enumerate(names):
        profile = site_profile(i, cfg.domain, cfg.seed)
        h, w = native_size(profile, cfg.size)
        opts = PlanOptions(h, w, cfg.seed, cfg.prevalence, cfg.lesion_scale)
        images += plan_site(name, base + (1 if i < rest else 0), opts, profile, len(images), i)
    return images


def _render_and_write(task: tuple[str, ImageSpec, str, float, float, dict]) -> dict:
    """Worker: render one image and write its files. Errors come back as text (they cross processes)."""
    layout, spec, out_dir, conspicuity, secondary_signs, options = task
    try:
        rendered = render_image(spec, conspicuity, secondary_signs)
        return LAYOUTS[layout].write_image(rendered, Path(out_dir), options)
    except MammoError as exc:
        return {"error": str(exc)}
    except OSError as exc:
        return {"error": f"{exc.filename or out_dir}: cannot write: {exc.strerror or exc}"}


def _checked(result: dict) -> dict:
    if "error" in result:
        raise DataError(None, result["error"])
    return result


def _prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(out_dir, "exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not (out_dir / MARKER).is_file():
            raise DataError(out_dir, "is not empty and holds no synthetic dataset; choose an empty folder")
        if not overwrite:
            raise DataError(out_dir, "already holds a synthetic dataset; pass overwrite=True (--overwrite) to replace it")
        shutil.rmtree(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(out_dir, f"cannot create the output folder: {exc.strerror or exc}") from None


def _workers(requested: int | None, n_tasks: int) -> int:
    if requested is not None and requested > 0:
        return min(requested, max(n_tasks, 1))
    if n_tasks < 12:  # process start-up costs more than it saves
        return 1
    return max(1, min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1, 8))


def _mp_context() -> mp.context.BaseContext:
    """spawn (safe when the caller runs threads: torch, Flower, pytest plugins), unless the main
    module cannot be re-imported by a spawned child (stdin script, some REPLs): then fork."""
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    if main_file and Path(main_file).is_file():
        return mp.get_context("spawn")
    return mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context("spawn")


def generate(config: SynthConfig) -> Path:
    """Write the dataset described by `config`; returns its root folder."""
    cfg = config.validate()
    images = plan(cfg)
    _prepare_out_dir(cfg.out_dir, cfg.overwrite)
    options = {"cbis_tree": cfg.cbis_tree, "site_names": cfg.names_of_sites()}
    tasks = [(cfg.layout, spec, str(cfg.out_dir), cfg.conspicuity, cfg.secondary_signs, options) for spec in images]
    workers = _workers(cfg.workers, len(tasks))
    start = time.perf_counter()
    results: list[dict] = []
    bar = tqdm(total=len(tasks), desc=f"synth {cfg.layout}", unit="img", disable=not cfg.progress)
    if workers == 1:
        for task in tasks:
            results.append(_checked(_render_and_write(task)))
            bar.update()
    else:
        with _mp_context().Pool(workers) as pool:
            for result in pool.imap(_render_and_write, tasks, chunksize=1):
                results.append(_checked(result))
                bar.update()
    bar.close()
    layout_rows = [row for r in results for row in r["layout"]]
    LAYOUTS[cfg.layout].finalize(cfg.out_dir, layout_rows, options)
    write_ground_truth(cfg.out_dir, [r["ground_truth"] for r in results], [row for r in results for row in r["rois"]])
    log.info("wrote %d images (%s layout) to %s in %.1f s with %d worker(s)", len(results), cfg.layout,
             cfg.out_dir, time.perf_counter() - start, workers)
    return cfg.out_dir


def generate_dataset(
    layout: str,
    out_dir: str | Path,
    patients: int,
    seed: int = 0,
    *,
    domain: str | None = None,
    sites: int = 1,
    size: tuple[int, int] | None = None,
    prevalence: float | None = None,
    conspicuity: float = 1.0,
    lesion_scale: float = 1.0,
    secondary_signs: float = 0.0,
    vendor: str | None = None,
    vendors: tuple[str, ...] | list[str] | None = None,
    cbis_tree: str = "descriptive",
    site_names: tuple[str, ...] | list[str] | None = None,
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Write a synthetic dataset and return its root folder.

    - `cbis-ddsm`: `<out>/CBIS-DDSM/...` DICOM tree + the four case CSVs in `<out>`.
    - `inbreast`: `<out>/INbreast Release 1.0/{AllDICOMs,AllXML,INbreast.csv}`; with `vendors`, each
      patient is imaged by one of those profiles (label-balanced), recorded in ground_truth.csv.
    - `manifest`: `<out>/site-1..site-K/{images/..., manifest.csv}` (one vendor profile per site).
    Every layout also writes `<out>/ground_truth.csv` and `<out>/ground_truth_rois.csv`.
    """
    config = SynthConfig(
        layout=layout, out_dir=Path(out_dir), patients=int(patients), seed=int(seed), domain=domain, sites=int(sites),
        size=None if size is None else (int(size[0]), int(size[1])), prevalence=prevalence,
        conspicuity=float(conspicuity), lesion_scale=float(lesion_scale), secondary_signs=float(secondary_signs),
        vendor=vendor, vendors=tuple(vendors) if vendors else None, cbis_tree=cbis_tree,
        site_names=None if site_names is None else tuple(site_names), workers=workers, overwrite=overwrite,
        progress=progress,
    )
    return generate(config)


__all__ = ["SynthConfig", "generate", "generate_dataset", "plan"]
