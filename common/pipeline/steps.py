"""The Shen et al. pipeline as resumable steps over one run directory.

RUNDIR/
  config.json           resolved preset + overrides (what this run used)
  preprocessing.json    image size, mode, mean (fixed at the first step; later steps reuse it)
  patches/              patch set (common.patches)
  patch_model.pt        5-class patch classifier (self-describing checkpoint)
  whole_image.pt        best whole-image classifier (validation AUC), whole_state.pt = resume state
  metrics.json, roc.png, predictions.csv   evaluation on the test split
  baseline.json, baseline_predictions_test.csv   two-step heatmap + random forest baseline (optional step)

Each step reads what the previous one wrote, so `mammo-train run` and the one-by-one
subcommands produce the same files. Bad images are skipped and listed, never fatal.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from mammo_fl.common.training.augment import AugmentSettings
from mammo_fl.common.pipeline.baseline import BaselineSettings, TwoStepBaseline, dataset_heatmaps
from mammo_fl.common.models.checkpoint import PATCH_CLASSES, load_checkpoint, read_checkpoint_meta, save_checkpoint
from mammo_fl.common.training.datasets import PatchDataset, WholeImageDataset
from mammo_fl.common.utils.device import select_device, seed_everything, set_cpu_threads
from mammo_fl.common.utils.errors import ConfigError, DataError, MammoError
from mammo_fl.common.evaluation.inference import check_preprocessing, ensemble_scores, predict_scores, summarize, write_predictions_csv
from mammo_fl.common.imaging.index import IndexTables, load_index
from mammo_fl.common.utils.jsonable import write_json
from mammo_fl.common.evaluation.metrics import auc, bootstrap_auc_ci, plot_roc, roc_curve, sens_spec_at
from mammo_fl.common.models import build_model, convert_patch_to_whole, load_pretrained_trunk
from mammo_fl.common.models.spec import trunk_stride
from mammo_fl.common.pipeline.patches import PatchSetReport, SamplingSettings, build_patch_set, load_patch_set
from mammo_fl.common.imaging.cache import ImageCache, PreprocessSettings, default_cache_root, mean_grey
from mammo_fl.common.training.patch import patch_stages, train_patch_classifier
from mammo_fl.common.training.whole import train_whole_classifier, whole_stages

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunPaths:
    root: Path

    @property
    def patches(self) -> Path:
        return self.root / "patches"

    @property
    def patch_model(self) -> Path:
        return self.root / "patch_model.pt"

    @property
    def whole_model(self) -> Path:
        return self.root / "whole_image.pt"

    @property
    def whole_state(self) -> Path:
        return self.root / "whole_state.pt"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def roc(self) -> Path:
        return self.root / "roc.png"

    @property
    def predictions(self) -> Path:
        return self.root / "predictions.csv"

    @property
    def preprocessing(self) -> Path:
        return self.root / "preprocessing.json"


@dataclass
class RunContext:
    config: dict[str, Any]
    index_dir: Path
    paths: RunPaths
    device: torch.device
    tables: IndexTables
    images: pd.DataFrame  # usable images with a `split` column
    cache: ImageCache
    preprocessing: dict[str, Any]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def seed(self) -> int:
        return int(self.config.get("seed", 0))

    @property
    def progress(self) -> bool:
        return bool(self.config.get("progress", True))

    @property
    def num_workers(self) -> int:
        return int(self.config.get("num_workers", 0))

    def split_images(self, split: str) -> pd.DataFrame:
        return self.images[self.images["split"] == split].reset_index(drop=True)

    def whole_dataset(self, split: str, augment: bool = False,
                      augment_settings: AugmentSettings | None = None) -> WholeImageDataset:
        return WholeImageDataset(self.split_images(split), self.cache, self.preprocessing["mean"], augment,
                                 seed=self.seed, augment_settings=augment_settings)


def augment_settings(train_cfg: dict[str, Any]) -> AugmentSettings:
    """The optional `augmentation` table of a [*_train] section (missing keys: the paper's defaults)."""
    table = train_cfg.get("augmentation", {})
    if not isinstance(table, dict):
        raise ConfigError("the augmentation setting must be a table, e.g. [whole_train.augmentation]")
    return AugmentSettings.from_dict(table)


def _section(config: dict[str, Any], name: str) -> dict[str, Any]:
    value = config.get(name)
    if not isinstance(value, dict):
        raise ConfigError(f"config section [{name}] is missing")
    return value


def preprocess_settings(config: dict[str, Any]) -> PreprocessSettings:
    data = _section(config, "data")
    return PreprocessSettings(int(data["height"]), int(data["width"]), str(data.get("mode", "paper")))


def open_run(config: dict[str, Any], index_dir: str | Path, run_dir: str | Path) -> RunContext:
    """Load the index, fill the image cache (skipping unreadable files), fix the preprocessing."""
    index_dir, run_dir = Path(index_dir), Path(run_dir)
    set_cpu_threads(int(config.get("threads", 0)))
    seed_everything(int(config.get("seed", 0)))
    device = select_device(str(config.get("device", "auto")))
    tables = load_index(index_dir)
    images = tables.images_with_split()
    run_dir.mkdir(parents=True, exist_ok=True)
    paths = RunPaths(run_dir)
    (run_dir / "config.json").write_text(json.dumps(config, indent=1))
    settings = preprocess_settings(config)
    cache_dir = str(_section(config, "data").get("cache_dir") or "")
    cache = ImageCache(Path(cache_dir) if cache_dir else default_cache_root(index_dir), settings)
    start = time.perf_counter()
    pairs = []
    if tables.rois is not None and not tables.rois.empty:
        by_id = dict(zip(images["image_id"].astype(str), images["image_path"].astype(str)))
        pairs = [(m, by_id[str(i)]) for i, m in zip(tables.rois["image_id"], tables.rois["mask_path"])
                 if str(i) in by_id]
    workers = int(_section(config, "data").get("workers", 0)) or None  # 0 = all cores
    image_report, mask_report = cache.build_with_masks(images["image_path"].astype(str).tolist(), pairs,
                                                       workers=workers, progress=bool(config.get("progress", True)))
    bad = {str(p) for p, _ in image_report.skipped}
    skipped = [(str(p), str(r)) for p, r in image_report.skipped + mask_report.skipped]
    for path, reason in skipped[:10]:
        log.warning("skipped %s: %s", path, reason)
    images = images[~images["image_path"].astype(str).isin(bad)].reset_index(drop=True)
    if images.empty:
        raise DataError(index_dir, "no readable images in the index")
    preprocessing = _fix_preprocessing(config, paths, cache, images, settings)
    ctx = RunContext(config, index_dir, paths, device, tables, images, cache, preprocessing, skipped)
    ctx.timings["cache"] = time.perf_counter() - start
    log.info("run %s: %d images (%s), device %s, mean %.2f", run_dir, len(images),
             ", ".join(f"{k} {v}" for k, v in images["split"].value_counts().items()), device, preprocessing["mean"])
    return ctx


def _fix_preprocessing(config: dict[str, Any], paths: RunPaths, cache: ImageCache, images: pd.DataFrame,
                       settings: PreprocessSettings) -> dict[str, Any]:
    """Size/mode from the config; mean from the config or measured on the training images (once per run)."""
    wanted = {"height": settings.height, "width": settings.width, "mode": settings.mode}
    if paths.preprocessing.is_file():
        saved = json.loads(paths.preprocessing.read_text())
        if {k: saved.get(k) for k in wanted} == wanted:
            return saved
        raise ConfigError(f"{paths.root} was run at {saved.get('height')}x{saved.get('width')} "
                          f"({saved.get('mode')}); use another --out for {settings.height}x{settings.width}")
    mean_cfg = _section(config, "data").get("mean", "auto")
    if mean_cfg == "auto":
        train = images[images["split"] == "train"]
        mean = mean_grey(cache, train["image_path"].astype(str).tolist())
    else:
        try:
            mean = float(mean_cfg)
        except (TypeError, ValueError):
            raise ConfigError(f"data.mean must be a number or \"auto\", got {mean_cfg!r}") from None
    out = {**wanted, "mean": round(float(mean), 4)}
    paths.preprocessing.write_text(json.dumps(out, indent=1))
    return out


# ------------------------------------------------------------------ steps


def step_patches(ctx: RunContext, out_dir: Path | None = None) -> PatchSetReport:
    """Sample the S1/S10 patch set of train (+ val) patients."""
    settings = SamplingSettings.from_config(_section(ctx.config, "patches"))
    report = build_patch_set(ctx.images, ctx.tables.rois, ctx.tables.split, ctx.cache, settings,
                             out_dir or ctx.paths.patches, ctx.seed, preprocessing=ctx.preprocessing,
                             progress=ctx.progress)
    ctx.timings["patches"] = report.seconds
    log.info("patch set %s: %s (%d images, %d problems)%s", report.out_dir,
             {s: sum(c.values()) for s, c in report.counts.items()}, report.images, len(report.skipped),
             " [reused]" if report.reused else "")
    return report


def step_train_patch(ctx: RunContext, pretrained: str | None = None, patches_dir: Path | None = None) -> dict[str, Any]:
    """3-stage patch classifier training -> patch_model.pt (best validation accuracy)."""
    table = load_patch_set(patches_dir or ctx.paths.patches)
    train_cfg = _section(ctx.config, "patch_train")
    model_cfg = _section(ctx.config, "patch_model")
    mean = ctx.preprocessing["mean"]
    train_rows, val_rows = table[table["split"] == "train"], table[table["split"] == "val"]
    if train_rows.empty:
        raise DataError(patches_dir or ctx.paths.patches, "the patch set has no training patches")
    train_set = PatchDataset(train_rows, mean, bool(train_cfg.get("augment", True)), seed=ctx.seed,
                             augment_settings=augment_settings(train_cfg), path_column="abs_path")
    val_set = PatchDataset(val_rows, mean, False, path_column="abs_path")
    spec = {"arch": model_cfg["arch"], "num_classes": len(PATCH_CLASSES), "dropout": float(model_cfg.get("dropout", 0.0))}
    seed_everything(ctx.seed)
    model = build_model("patch", spec)
    weights = pretrained or str(model_cfg.get("pretrained") or "")
    if weights:
        load_pretrained_trunk(model, weights)
    result = train_patch_classifier(model, train_set, val_set, patch_stages(train_cfg), ctx.device,
                                    batch_size=int(train_cfg.get("batch_size", 32)), seed=ctx.seed,
                                    augment=bool(train_cfg.get("augment", True)), num_workers=ctx.num_workers,
                                    progress=ctx.progress)
    patch_size = int(_section(ctx.config, "patches")["patch_size"])
    metrics = {"val_accuracy": result.best_metric, "best_epoch": result.best_epoch + 1,
               "train_patches": len(train_set), "val_patches": len(val_set), "seconds": result.seconds}
    save_checkpoint(ctx.paths.patch_model, model, kind="patch", model_spec=model.spec,
                    preprocessing={"height": patch_size, "width": patch_size, "mode": ctx.preprocessing["mode"],
                                   "mean": mean, "image_height": ctx.preprocessing["height"],
                                   "image_width": ctx.preprocessing["width"]},
                    class_names=PATCH_CLASSES,
                    provenance={"step": "train-patch", "index_dir": str(ctx.index_dir), "seed": ctx.seed,
                                "pretrained": weights or None, "history": result.history,
                                "patch_config": patch_config(ctx.config)},
                    metrics=metrics)
    ctx.timings["train_patch"] = result.seconds
    log.info("patch classifier: val accuracy %.4f (epoch %d) -> %s", result.best_metric, result.best_epoch + 1,
             ctx.paths.patch_model)
    return metrics


def top_spec(config: dict[str, Any]) -> dict[str, Any]:
    """The [tops.<whole_model.top>] table of the preset."""
    name = str(_section(config, "whole_model").get("top"))
    tops = config.get("tops", {})
    if name not in tops:
        raise ConfigError(f"whole_model.top = {name!r} is not a [tops.*] entry; known: {', '.join(tops)}")
    return tops[name]


def step_train_whole(ctx: RunContext, patch_model: Path | None = None, resume: bool = True) -> dict[str, Any]:
    """Convert the patch classifier and train it on whole images (2 stages) -> whole_image.pt."""
    patch = load_checkpoint(patch_model or ctx.paths.patch_model)
    if patch.kind != "patch":
        raise DataError(patch_model or ctx.paths.patch_model, f"expected a patch checkpoint, got {patch.kind!r}")
    whole_cfg = _section(ctx.config, "whole_model")
    train_cfg = _section(ctx.config, "whole_train")
    size = [int(ctx.preprocessing["height"]), int(ctx.preprocessing["width"])]
    seed_everything(ctx.seed)
    model = convert_patch_to_whole(patch.model, top_spec(ctx.config), dropout=float(whole_cfg.get("dropout", 0.0)),
                                   input_size=size)
    if not resume:
        ctx.paths.whole_state.unlink(missing_ok=True)
    train_set = ctx.whole_dataset("train", augment=bool(train_cfg.get("augment", True)),
                                  augment_settings=augment_settings(train_cfg))
    val_set = ctx.whole_dataset("val")
    result = train_whole_classifier(
        model, train_set, val_set, whole_stages(train_cfg), ctx.device, preprocessing=ctx.preprocessing,
        best_path=ctx.paths.whole_model, state_path=ctx.paths.whole_state,
        batch_size=int(train_cfg.get("batch_size", 2)), seed=ctx.seed, augment=bool(train_cfg.get("augment", True)),
        num_workers=ctx.num_workers, resume=resume, progress=ctx.progress,
        provenance={"step": "train-whole", "index_dir": str(ctx.index_dir), "seed": ctx.seed,
                    "patch_model": str(patch_model or ctx.paths.patch_model), "top": whole_cfg.get("top"),
                    "patch_provenance": {k: v for k, v in patch.provenance.items() if k != "history"}},
    )
    if not ctx.paths.whole_model.is_file():
        raise MammoError("whole-image training produced no checkpoint (zero epochs?)")
    ctx.timings["train_whole"] = result.seconds
    log.info("whole-image classifier: val AUC %.4f (epoch %d) -> %s", result.best_metric, result.best_epoch + 1,
             ctx.paths.whole_model)
    return {"val_auc": result.best_metric, "best_epoch": result.best_epoch + 1, "seconds": result.seconds,
            "history": result.history}


def _scores(checkpoints: list[Path], dataset: WholeImageDataset, ctx: RunContext, tta: bool, batch: int) -> np.ndarray:
    if len(checkpoints) == 1:
        ckpt = load_checkpoint(checkpoints[0], ctx.device)
        check_preprocessing(ckpt.preprocessing, dataset, str(checkpoints[0]))
        return predict_scores(ckpt.model, dataset, ctx.device, tta=tta, batch_size=batch, progress=ctx.progress)
    return ensemble_scores(checkpoints, dataset, ctx.device, tta=tta, batch_size=batch, progress=ctx.progress)


def step_evaluate(ctx: RunContext, checkpoints: list[Path] | None = None, out_dir: Path | None = None,
                  split: str = "test") -> dict[str, Any]:
    """Per-image AUC (+ bootstrap CI), A-AUC (flip TTA), sens/spec, ROC PNG, predictions CSV, metrics.json."""
    checkpoints = checkpoints or [ctx.paths.whole_model]
    out = Path(out_dir) if out_dir else ctx.paths.root
    out.mkdir(parents=True, exist_ok=True)
    ev = _section(ctx.config, "evaluate")
    tta, batch = bool(ev.get("tta", True)), int(ev.get("batch_size", 8))
    n_boot, threshold = int(ev.get("bootstrap", 2000)), float(ev.get("threshold", 0.5))
    test_set = ctx.whole_dataset(split)
    if len(test_set) == 0:
        raise DataError(ctx.index_dir, f"no {split} images to evaluate")
    start = time.perf_counter()
    labels = test_set.labels()
    groups = ctx.split_images(split)["patient_id"].astype(str).to_numpy()
    scores = _scores(checkpoints, test_set, ctx, False, batch)
    summary = summarize(labels, scores, threshold, groups=groups, n_boot=n_boot, seed=ctx.seed)
    metrics: dict[str, Any] = {
        f"{split}_auc": summary["auc"], f"{split}_auc_ci": summary["auc_ci"],
        "threshold": threshold, "sensitivity": summary["sensitivity"], "specificity": summary["specificity"],
        f"n_{split}": summary["n"], f"n_{split}_positive": summary["n_pos"],
        "checkpoints": [str(c) for c in checkpoints],
    }
    curves = {"AUC": roc_curve(labels, scores)} if len(np.unique(labels)) == 2 else {}
    tta_scores = None
    if tta:
        tta_scores = _scores(checkpoints, test_set, ctx, True, batch)
        metrics[f"{split}_a_auc"] = auc(labels, tta_scores)
        metrics[f"{split}_a_auc_ci"] = list(bootstrap_auc_ci(labels, tta_scores, n=n_boot, seed=ctx.seed,
                                                             groups=groups))
        sens, spec = sens_spec_at(labels, tta_scores, threshold)
        metrics["a_sensitivity"], metrics["a_specificity"] = sens, spec
        if curves:
            curves["A-AUC (flip TTA)"] = roc_curve(labels, tta_scores)
    val_set = ctx.whole_dataset("val")
    if len(val_set) and split != "val":
        metrics["val_auc"] = auc(val_set.labels(), _scores(checkpoints, val_set, ctx, False, batch))
    else:
        metrics.setdefault("val_auc", float("nan"))
    write_predictions_csv(out / "predictions.csv", test_set.image_ids, scores, labels)
    if tta_scores is not None:
        pred = pd.read_csv(out / "predictions.csv", dtype={"image_id": str})
        pred.insert(2, "malignant_prob_tta", np.round(tta_scores, 6))
        pred.to_csv(out / "predictions.csv", index=False)
    if curves:
        plot_roc(out / "roc.png", curves, title=f"{split} ROC ({len(labels)} images)")
    metrics["seconds"] = time.perf_counter() - start
    metrics["skipped_images"] = len(ctx.skipped)
    ctx.timings["evaluate"] = metrics["seconds"]
    write_json(out / "metrics.json", metrics)
    log.info("%s AUC %.4f [%.3f, %.3f]%s", split, metrics[f"{split}_auc"], *metrics[f"{split}_auc_ci"],
             f", A-AUC {metrics[f'{split}_a_auc']:.4f}" if tta else "")
    return metrics


def step_baseline(ctx: RunContext, patch_model: Path | None = None, split: str = "test") -> dict[str, Any]:
    """Two-step baseline: patch heatmaps of whole images -> regional features -> random forest."""
    patch = load_checkpoint(patch_model or ctx.paths.patch_model, ctx.device)
    cfg = dict(_section(ctx.config, "baseline"))
    settings = BaselineSettings(cutoffs=tuple(float(c) for c in cfg.get("cutoffs", (0.3, 0.5, 0.7, 0.9))),
                                n_estimators=int(cfg.get("n_estimators", 500)), max_depth=int(cfg.get("max_depth", 9)),
                                min_samples_split=cfg.get("min_samples_split", 300), seed=ctx.seed)
    stride = trunk_stride(str(patch.model_spec.get("arch", "resnet_tiny")))
    window = max(1, round(int(patch.preprocessing["height"]) / stride))  # patch footprint in trunk cells
    start = time.perf_counter()
    train_maps, train_y = dataset_heatmaps(patch.model.trunk, patch.model.fc, ctx.whole_dataset("train"), window,
                                           ctx.device, progress=ctx.progress)
    test_set = ctx.whole_dataset(split)
    test_maps, test_y = dataset_heatmaps(patch.model.trunk, patch.model.fc, test_set, window, ctx.device,
                                         progress=ctx.progress)
    model = TwoStepBaseline(settings).fit(train_maps, train_y)
    scores = model.predict(test_maps)
    groups = ctx.split_images(split)["patient_id"].astype(str).to_numpy()
    out = {f"baseline_{split}_auc": auc(test_y, scores),
           f"baseline_{split}_auc_ci": list(bootstrap_auc_ci(test_y, scores, n=int(_section(ctx.config, "evaluate")
                                                                                .get("bootstrap", 2000)),
                                                             seed=ctx.seed, groups=groups)),
           "heatmap_window": window, "features": int(model.features(train_maps[:1]).shape[1]),
           "seconds": time.perf_counter() - start}
    write_json(ctx.paths.root / "baseline.json", out)
    # same columns as predictions.csv, so `mammo-train compare` can pair the two designs image by image
    write_predictions_csv(ctx.paths.root / f"baseline_predictions_{split}.csv", test_set.image_ids, scores, test_y)
    log.info("two-step baseline: %s AUC %.4f", split, out[f"baseline_{split}_auc"])
    return out


def patch_config(config: dict[str, Any]) -> dict[str, Any]:
    """The settings a patch classifier depends on (a finished one is reused only if they match)."""
    return {k: config.get(k) for k in ("seed", "patches", "patch_model", "patch_train")}


def _reusable_patch_model(ctx: RunContext) -> bool:
    if not ctx.paths.patch_model.is_file():
        return False
    try:
        meta = read_checkpoint_meta(ctx.paths.patch_model)
    except DataError:
        return False
    return meta.get("provenance", {}).get("patch_config") == json.loads(json.dumps(patch_config(ctx.config)))


def run_pipeline(ctx: RunContext, pretrained: str | None = None, resume: bool = True) -> dict[str, Any]:
    """patches -> patch classifier -> whole-image classifier -> evaluation, timings in metrics.json.

    With `resume`, finished steps whose settings did not change are reused and an interrupted
    whole-image training continues from its saved state.
    """
    start = time.perf_counter()
    report = step_patches(ctx)
    if resume and report.reused and _reusable_patch_model(ctx):
        patch_metrics = load_checkpoint(ctx.paths.patch_model).metrics
        log.info("reusing %s", ctx.paths.patch_model)
    else:
        patch_metrics = step_train_patch(ctx, pretrained)
        resume = False  # a new patch classifier invalidates any whole-image state
    whole = step_train_whole(ctx, resume=resume)
    metrics = step_evaluate(ctx)
    metrics["val_auc_selection"] = whole["val_auc"]
    metrics["patch_val_accuracy"] = patch_metrics.get("val_accuracy")
    metrics["timings_s"] = {k: round(v, 1) for k, v in ctx.timings.items()}
    metrics["total_s"] = round(time.perf_counter() - start + ctx.timings.get("cache", 0.0), 1)
    metrics["device"] = str(ctx.device)
    metrics["torch_threads"] = torch.get_num_threads()
    write_json(ctx.paths.metrics, metrics)
    return metrics
