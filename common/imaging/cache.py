"""Preprocessing (geometry + resize) and the 16-bit PNG cache.

Modes:
- ``paper`` (Shen et al.): no crop, no flip, anisotropic resize to (height, width).
- ``crop``: laterality normalisation (chest wall on the left, found from the breast
  mask so wrong metadata does not matter), breast crop (threshold, erosion, largest
  component, dilation, bounding box + margin), aspect-preserving resize, zero padding
  at the right / bottom.

The geometry of every cached image (crop box, flip, resized extent) is stored next to
its PNG, so ROI masks go through exactly the same transform (nearest neighbour).

Resize: ``torch.nn.functional.interpolate(mode="bicubic", antialias=True)``: on one idle
core 0.07 s vs 0.14 s for Pillow's float ("F") or ``I;16`` bicubic at 4084x3328 -> 1152x896,
same result within 4e-5 (benchmarks/bench_preprocess.py prints them side by side).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mammo_fl.common.imaging.dicom import read_dicom, read_mask_dicom
from mammo_fl.common.utils.errors import ConfigError, DataError

log = logging.getLogger(__name__)

MODES = ("paper", "crop")
CACHE_VERSION = 1  # bump when the output of a given setting changes
_CROP_WORK_SIDE = 512  # crop box searched on a downsampled copy (speed)


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class PreprocessSettings:
    height: int
    width: int
    mode: str = "paper"
    crop_margin: float = 0.02  # crop mode: margin added around the breast box (fraction of side)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"unknown preprocessing mode {self.mode!r}; choose one of {', '.join(MODES)}")
        if int(self.height) < 8 or int(self.width) < 8:
            raise ConfigError(f"target size {self.height}x{self.width} is too small (min 8x8)")
        if not 0.0 <= float(self.crop_margin) < 0.5:
            raise ConfigError(f"crop_margin {self.crop_margin} must be in [0, 0.5)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessSettings:
        known = {k: data[k] for k in ("height", "width", "mode", "crop_margin") if k in data}
        try:
            return cls(**known)
        except TypeError as exc:
            raise ConfigError(f"invalid preprocessing settings {data!r}: {exc}") from None

    def key(self) -> str:
        """Short stable hash naming this setting's cache folder."""
        text = json.dumps({"v": CACHE_VERSION, **self.to_dict()}, sort_keys=True)
        tag = f"{self.mode}{self.height}x{self.width}"
        return f"{tag}-{hashlib.sha1(text.encode()).hexdigest()[:8]}"


def parse_size(text: str) -> tuple[int, int]:
    """`1152x896` -> (1152, 896) as (height, width)."""
    try:
        h, w = (int(v) for v in str(text).lower().replace("×", "x").split("x"))
    except ValueError:
        raise ConfigError(f"size {text!r} is not HEIGHTxWIDTH (e.g. 1152x896)") from None
    if h < 8 or w < 8:
        raise ConfigError(f"size {text!r} is too small (min 8x8)")
    return h, w


# --------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class Geometry:
    """How a source image maps to the cached one; masks follow the same steps."""

    src_shape: tuple[int, int]
    crop: tuple[int, int, int, int]  # y0, y1, x0, x1 in source pixels (end exclusive)
    flip: bool  # horizontal flip after the crop
    resized: tuple[int, int]  # extent of the resized content, placed at the top-left
    out_shape: tuple[int, int]

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Geometry:
        return cls(
            src_shape=tuple(d["src_shape"]),  # type: ignore[arg-type]
            crop=tuple(d["crop"]),  # type: ignore[arg-type]
            flip=bool(d["flip"]),
            resized=tuple(d["resized"]),  # type: ignore[arg-type]
            out_shape=tuple(d["out_shape"]),  # type: ignore[arg-type]
        )


def _downsample_factor(shape: tuple[int, int]) -> int:
    return max(1, int(np.ceil(max(shape) / _CROP_WORK_SIDE)))


def breast_mask_small(pixels: np.ndarray) -> tuple[np.ndarray, int]:
    """Breast region on a block-averaged copy: threshold 5 % of max, erosion removes
    thin labels / lines, keep the largest component, dilate back. Returns (mask, factor)."""
    from scipy import ndimage

    f = _downsample_factor(pixels.shape)
    h, w = (pixels.shape[0] // f) * f, (pixels.shape[1] // f) * f
    small = pixels[:h, :w].reshape(h // f, f, w // f, f).mean(axis=(1, 3)) if f > 1 else pixels
    top = float(small.max())
    if top <= 0:
        return np.zeros(small.shape, dtype=bool), f
    fg = ndimage.binary_erosion(small > 0.05 * top, iterations=2)
    labels, n = ndimage.label(fg)
    if n == 0:
        return np.zeros(small.shape, dtype=bool), f
    sizes = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, n + 1))
    largest = labels == (int(np.argmax(sizes)) + 1)
    return ndimage.binary_dilation(largest, iterations=2), f


def chest_wall_on_right(breast: np.ndarray) -> bool:
    """The chest wall is the side where the breast is widest: compare tissue area in
    the left and right halves of the breast's column extent."""
    cols = breast.sum(axis=0)
    nz = np.nonzero(cols)[0]
    if nz.size == 0:
        return False
    lo, hi = nz[0], nz[-1] + 1
    mid = (lo + hi) // 2
    return float(cols[mid:hi].sum()) > float(cols[lo:mid].sum())


def _crop_box(breast: np.ndarray, f: int, shape: tuple[int, int], margin: float) -> tuple[int, int, int, int]:
    rows = np.nonzero(breast.any(axis=1))[0]
    cols = np.nonzero(breast.any(axis=0))[0]
    if rows.size == 0:  # blank image: keep everything
        return 0, shape[0], 0, shape[1]
    my, mx = int(round(margin * shape[0])), int(round(margin * shape[1]))
    y0, y1 = max(0, rows[0] * f - my), min(shape[0], (rows[-1] + 1) * f + my)
    x0, x1 = max(0, cols[0] * f - mx), min(shape[1], (cols[-1] + 1) * f + mx)
    return int(y0), int(y1), int(x0), int(x1)


def plan_geometry(pixels: np.ndarray, settings: PreprocessSettings) -> Geometry:
    """Decide crop / flip / resize for one image (pixels in [0, 1], dense bright)."""
    shape = (int(pixels.shape[0]), int(pixels.shape[1]))
    out = (int(settings.height), int(settings.width))
    if settings.mode == "paper":
        return Geometry(shape, (0, shape[0], 0, shape[1]), False, out, out)
    breast, f = breast_mask_small(pixels)
    crop = _crop_box(breast, f, shape, settings.crop_margin)
    flip = chest_wall_on_right(breast)
    ch, cw = crop[1] - crop[0], crop[3] - crop[2]
    scale = min(out[0] / ch, out[1] / cw)
    resized = (max(1, min(out[0], round(ch * scale))), max(1, min(out[1], round(cw * scale))))
    return Geometry(shape, crop, flip, resized, out)


def _cut(array: np.ndarray, g: Geometry) -> np.ndarray:
    y0, y1, x0, x1 = g.crop
    part = array[y0:y1, x0:x1]
    return part[:, ::-1] if g.flip else part


def resize_image(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Antialiased bicubic resize of a float image, clipped to [0, 1]."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))[None, None]
    if x.shape[-2:] == (height, width):
        return np.clip(x[0, 0].numpy(), 0.0, 1.0)
    with torch.no_grad():
        y = F.interpolate(x, size=(height, width), mode="bicubic", antialias=True, align_corners=False)
    return np.clip(y[0, 0].numpy(), 0.0, 1.0)


def resize_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize (pixel centres) of a boolean mask."""
    rows = np.minimum((np.arange(height) + 0.5) * mask.shape[0] / height, mask.shape[0] - 1).astype(np.intp)
    cols = np.minimum((np.arange(width) + 0.5) * mask.shape[1] / width, mask.shape[1] - 1).astype(np.intp)
    return mask[np.ix_(rows, cols)]


def to_uint16(pixels: np.ndarray) -> np.ndarray:
    return np.round(np.clip(pixels, 0.0, 1.0) * 65535.0).astype(np.uint16)


def preprocess_array(pixels: np.ndarray, settings: PreprocessSettings) -> tuple[np.ndarray, Geometry]:
    """Float [0, 1] image -> (uint16 image at the target size, its geometry)."""
    g = plan_geometry(pixels, settings)
    content = resize_image(_cut(pixels, g), *g.resized)
    out = np.zeros(g.out_shape, dtype=np.float32)
    out[: g.resized[0], : g.resized[1]] = content
    return to_uint16(out), g


def apply_geometry_to_mask(mask: np.ndarray, g: Geometry) -> np.ndarray:
    """Same crop / flip / resize / pad as the image, nearest neighbour."""
    if tuple(mask.shape) != tuple(g.src_shape):
        raise ValueError(f"mask shape {mask.shape[0]}x{mask.shape[1]} differs from image {g.src_shape[0]}x{g.src_shape[1]}")
    out = np.zeros(g.out_shape, dtype=bool)
    out[: g.resized[0], : g.resized[1]] = resize_mask(_cut(mask.astype(bool), g), *g.resized)
    return out


def to_model_input(image: np.ndarray, mean: float) -> np.ndarray:
    """Cached uint16 image -> float32 (3, H, W) on the paper's 0..255 scale minus `mean`."""
    grey = image.astype(np.float32) * np.float32(255.0 / 65535.0) - np.float32(mean)
    return np.repeat(grey[None], 3, axis=0)


# --------------------------------------------------------------------------- cache


@dataclass
class CacheReport:
    done: int  # images (or masks) now available in the cache
    skipped: list[tuple[str, str]]  # (path, reason)
    seconds: float
    computed: int = 0  # of `done`, how many were produced in this run (the rest were hits)

    @property
    def per_second(self) -> float:
        return self.computed / self.seconds if self.seconds > 0 else 0.0


def _file_stamp(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"


# Images: zlib level 0 writes ~2.5x and reads ~2x faster than level 1 for ~35 % more disk
# (1.97 vs 1.45 MiB at 1152x896); training reads every image every epoch. Masks are
# mostly zeros and shrink a lot even at level 1.
IMAGE_PNG_LEVEL, MASK_PNG_LEVEL = 0, 1


def _atomic_write_png(array: np.ndarray, dest: Path, level: int = IMAGE_PNG_LEVEL) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    try:
        Image.fromarray(array).save(tmp, format="PNG", compress_level=level)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _atomic_write_json(data: dict[str, Any], dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, dest)


def _read_png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im).copy()


def _read_mask_source(mask_path: Path) -> np.ndarray:
    """A mask from DICOM (CBIS-DDSM) or an image file (PNG rasterised by an adapter)."""
    if mask_path.suffix.lower() in (".dcm", ".dicom", ""):
        return read_mask_dicom(mask_path)
    if not mask_path.is_file():
        raise DataError(mask_path, "file not found")
    try:
        arr = _read_png(mask_path)
    except (OSError, ValueError) as exc:
        raise DataError(mask_path, f"unreadable mask image: {exc}") from None
    if arr.ndim == 3:
        arr = arr[..., 0]
    return arr > 0


def _worker_init() -> None:
    """Worker processes: one thread each (the pool provides the parallelism)."""
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover
        pass


def available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


@dataclass
class ImageCache:
    """16-bit PNG cache of preprocessed images (and their ROI masks) under `root/<settings.key()>/`.

    Entries are named by a hash of (absolute source path, size, mtime, settings), so an
    edited source or other settings never return a stale image; writes are atomic.
    Picklable (only paths and settings) for process pools.
    """

    root: Path
    settings: PreprocessSettings
    min_side: int | None = None  # passed to read_dicom; None = common.dicom.default_min_side()
    require_mg: bool = True
    _dir: Path = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self._dir = self.root / self.settings.key()

    @property
    def directory(self) -> Path:
        return self._dir

    # --- paths
    def _image_entry(self, dicom_path: Path) -> Path:
        digest = hashlib.sha1(f"{_file_stamp(dicom_path)}|{self.settings.key()}".encode()).hexdigest()[:20]
        return self._dir / "images" / digest[:2] / f"{dicom_path.stem[:40]}-{digest}"

    def _mask_entry(self, mask_path: Path, image_entry: Path) -> Path:
        digest = hashlib.sha1(f"{_file_stamp(mask_path)}|{image_entry.name}".encode()).hexdigest()[:20]
        return self._dir / "masks" / digest[:2] / f"{mask_path.stem[:40]}-{digest}"

    def image_file(self, dicom_path: str | Path) -> Path:
        """Where the PNG for this source lives (whether or not it exists yet)."""
        path = Path(dicom_path)
        if not path.is_file():
            raise DataError(path, "file not found")
        return self._image_entry(path).with_suffix(".png")

    # --- images
    def _ensure_image(self, dicom_path: Path) -> tuple[Path, bool]:
        """PNG path for `dicom_path`, computing it on a miss. Returns (png, computed)."""
        png = self.image_file(dicom_path)
        meta = png.with_suffix(".json")
        if png.is_file() and meta.is_file():
            return png, False
        img = read_dicom(dicom_path, min_side=self.min_side, require_mg=self.require_mg)
        array, geometry = preprocess_array(img.pixels, self.settings)
        _atomic_write_json(
            {
                "source": str(Path(dicom_path).resolve()),
                "settings": self.settings.to_dict(),
                "geometry": geometry.to_dict(),
                "voi": img.voi,
                "laterality": img.laterality,
                "bits_stored": img.bits_stored,
            },
            meta,
        )
        _atomic_write_png(array, png)
        return png, True

    def load(self, dicom_path: str | Path) -> np.ndarray:
        """uint16 (H, W) preprocessed image; preprocesses on a miss. Raises DataError."""
        png, _ = self._ensure_image(Path(dicom_path))
        try:
            image = _read_png(png)
        except (OSError, ValueError):  # damaged entry: rebuild once
            png.unlink(missing_ok=True)
            png, _ = self._ensure_image(Path(dicom_path))
            image = _read_png(png)
        return image.astype(np.uint16, copy=False)

    def geometry(self, dicom_path: str | Path) -> Geometry:
        png, _ = self._ensure_image(Path(dicom_path))
        return Geometry.from_dict(json.loads(png.with_suffix(".json").read_text())["geometry"])

    # --- masks
    def _ensure_mask(self, mask_path: Path, image_path: Path) -> tuple[Path, bool]:
        png, _ = self._ensure_image(image_path)
        entry = self._mask_entry(mask_path, png.with_suffix("")) if mask_path.is_file() else None
        if entry is None:
            raise DataError(mask_path, "file not found")
        out = entry.with_suffix(".png")
        if out.is_file():
            return out, False
        geometry = Geometry.from_dict(json.loads(png.with_suffix(".json").read_text())["geometry"])
        mask = _read_mask_source(mask_path)
        try:
            resized = apply_geometry_to_mask(mask, geometry)
        except ValueError as exc:
            raise DataError(mask_path, f"{exc} ({image_path})") from None
        _atomic_write_png(resized.astype(np.uint8) * 255, out, MASK_PNG_LEVEL)
        return out, True

    def load_mask(self, mask_path: str | Path, image_path: str | Path) -> np.ndarray:
        """bool (H, W) mask in its image's cached geometry (nearest neighbour)."""
        out, _ = self._ensure_mask(Path(mask_path), Path(image_path))
        return _read_png(out) > 0

    # --- batch
    def _is_cached(self, item: tuple[str, tuple[str, ...]]) -> bool:
        """True when an entry's image is already cached (and it has no masks to build)."""
        image_path, mask_paths = item
        if mask_paths:
            return False
        try:
            png = self.image_file(image_path)
        except DataError:
            return False
        return png.is_file() and png.with_suffix(".json").is_file()

    def _build_entry(self, item: tuple[str, tuple[str, ...]]) -> tuple[_Outcome, list[_Outcome]]:
        """One image and its masks (the masks need the image's geometry)."""
        image_path, mask_paths = item
        image = _attempt(image_path, lambda: self._ensure_image(Path(image_path))[1])
        masks = [
            _attempt(m, lambda m=m: self._ensure_mask(Path(m), Path(image_path))[1])
            if image.reason is None else _Outcome(str(m), f"image not usable: {image.reason}", False)
            for m in mask_paths
        ]
        return image, masks

    def build(self, paths: Iterable[str | Path], workers: int | None = None, progress: bool = True) -> CacheReport:
        """Fill the cache for `paths` in parallel; bad files are skipped and reported."""
        images, _ = self.build_with_masks(paths, [], workers, progress)
        return images

    def build_masks(
        self, pairs: Iterable[tuple[str | Path, str | Path]], workers: int | None = None, progress: bool = True
    ) -> CacheReport:
        """Cache (mask_path, image_path) pairs at their image's geometry (images cached as needed)."""
        pairs = list(pairs)
        _, masks = self.build_with_masks(dict.fromkeys(str(i) for _, i in pairs), pairs, workers, progress)
        return masks

    def build_with_masks(
        self,
        paths: Iterable[str | Path],
        pairs: Iterable[tuple[str | Path, str | Path]],
        workers: int | None = None,
        progress: bool = True,
    ) -> tuple[CacheReport, CacheReport]:
        """Images and their ROI masks in one parallel pass -> (image report, mask report).
        A mask whose image is not in `paths` is still built (with its image)."""
        wanted = [str(p) for p in paths]
        by_image: dict[str, list[str]] = {p: [] for p in wanted}
        for mask, image in pairs:
            by_image.setdefault(str(image), []).append(str(mask))
        items = [(image, tuple(masks)) for image, masks in by_image.items()]
        start = time.perf_counter()
        if (workers is None or workers > 1) and all(self._is_cached(item) for item in items):
            workers = 1  # all hits: a process pool (it imports torch) would cost seconds per call (engineer E)
        results = _run_pool(self._build_entry, items, workers, progress)
        seconds = time.perf_counter() - start
        keep = set(wanted)
        image_outcomes = [img for img, _ in results if img.path in keep]
        mask_outcomes = [m for _, ms in results for m in ms]
        return _report(image_outcomes, seconds), _report(mask_outcomes, seconds)


@dataclass(frozen=True)
class _Outcome:
    path: str
    reason: str | None  # None = in the cache
    computed: bool


def _attempt(path: str | Path, fn: Any) -> _Outcome:
    """Run one cache step; a batch never dies on one file."""
    try:
        return _Outcome(str(path), None, bool(fn()))
    except DataError as exc:
        where = "" if exc.path in (None, str(path)) else f"{exc.path}: "
        return _Outcome(str(path), where + exc.cause, False)
    except Exception as exc:
        return _Outcome(str(path), f"{type(exc).__name__}: {exc}", False)


def _report(outcomes: list[_Outcome], seconds: float) -> CacheReport:
    skipped = [(o.path, o.reason) for o in outcomes if o.reason is not None]
    computed = sum(1 for o in outcomes if o.reason is None and o.computed)
    return CacheReport(done=len(outcomes) - len(skipped), skipped=skipped, seconds=seconds, computed=computed)  # type: ignore[arg-type]


_POOL_PRELOAD = ["mammo_fl.common.imaging.cache", "torch"]


def _run_pool(fn: Any, items: list[Any], workers: int | None, progress: bool) -> list[Any]:
    """Map `fn` over `items` in order, in processes when workers > 1, with a progress bar."""
    from tqdm import tqdm

    workers = available_cores() if workers is None else max(1, int(workers))
    workers = min(workers, max(1, len(items)))
    bar = tqdm(total=len(items), unit="image", desc="preprocess", disable=not progress)
    results: list[Any] = [None] * len(items)
    try:
        if workers <= 1:
            for i, item in enumerate(items):
                results[i] = fn(item)
                bar.update(1)
            return results
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        # forkserver: workers fork from a clean server that imported torch once (a fork
        # of a parent that already ran torch ops can deadlock; spawn re-imports per worker)
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(_POOL_PRELOAD)
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init) as pool:
            futures = {pool.submit(fn, item): i for i, item in enumerate(items)}
            for fut in as_completed(futures):
                results[futures[fut]] = fut.result()
                bar.update(1)
        return results
    finally:
        bar.close()


def default_cache_root(index_dir: str | Path) -> Path:
    """`OUTDIR/cache`; an ImageCache puts each setting under `<root>/<settings.key()>/`."""
    return Path(index_dir) / "cache"


def mean_grey(cache: ImageCache, paths: Iterable[str | Path]) -> float:
    """Mean grey value on the paper's 0..255 scale over cached images (skips bad files)."""
    total, count = 0.0, 0
    for p in paths:
        try:
            image = cache.load(p)
        except DataError:
            continue
        total += float(image.mean(dtype=np.float64)) * 255.0 / 65535.0
        count += 1
    if count == 0:
        raise DataError(None, "no readable images to compute a mean grey value from")
    return total / count
