"""The Shen et al. pipeline as resumable steps over one run directory (`common.pipeline.rundir`).

patches -> patch classifier -> whole-image classifier -> evaluation (+ the two-step baseline).
Each step reads what the previous one wrote and its settings from `ctx.settings` (typed,
`common.pipeline.settings`), so `mammo-train run` and the one-by-one subcommands produce the
same files.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mammo_fl.common.evaluation.inference import (
    check_preprocessing,
    ensemble_scores,
    predict_scores,
    summarize_test_scores,
    write_predictions_csv,
)
from mammo_fl.common.evaluation.metrics import auc, bootstrap_auc_ci, plot_roc, roc_curve, sens_spec_at
from mammo_fl.common.models import build_model, convert_patch_to_whole, load_pretrained_trunk
from mammo_fl.common.models.checkpoint import PATCH_CLASSES, load_checkpoint, read_checkpoint_meta, save_checkpoint
from mammo_fl.common.models.spec import trunk_stride
from mammo_fl.common.pipeline.baseline import TwoStepBaseline, dataset_heatmaps
from mammo_fl.common.pipeline.patches import PatchSetReport, build_patch_set, load_patch_set
from mammo_fl.common.pipeline.rundir import RunContext
from mammo_fl.common.training.datasets import PatchDataset, WholeImageDataset
from mammo_fl.common.training.patch import train_patch_classifier
from mammo_fl.common.training.whole import train_whole_classifier
from mammo_fl.common.utils.device import seed_everything
from mammo_fl.common.utils.errors import DataError, MammoError
from mammo_fl.common.utils.jsonable import write_json

log = logging.getLogger(__name__)


def step_patches(ctx: RunContext, out_dir: Path | None = None) -> PatchSetReport:
    """Sample the S1/S10 patch set of train (+ val) patients."""
    report = build_patch_set(ctx.images, ctx.tables.rois, ctx.tables.split, ctx.cache, ctx.settings.patches,
                             out_dir or ctx.paths.patches, ctx.seed, preprocessing=ctx.preprocessing,
                             progress=ctx.progress, workers=ctx.settings.data.workers or None)
    ctx.timings["patches"] = report.seconds
    log.info("patch set %s: %s (%d images, %d problems)%s", report.out_dir,
             {s: sum(c.values()) for s, c in report.counts.items()}, report.images, len(report.skipped),
             " [reused]" if report.reused else "")
    return report


def step_train_patch(ctx: RunContext, pretrained: str | None = None, patches_dir: Path | None = None) -> dict[str, Any]:
    """3-stage patch classifier training -> patch_model.pt (best validation accuracy)."""
    table = load_patch_set(patches_dir or ctx.paths.patches)
    train_cfg, model_cfg = ctx.settings.patch_train, ctx.settings.patch_model
    mean = ctx.preprocessing["mean"]
    train_rows, val_rows = table[table["split"] == "train"], table[table["split"] == "val"]
    if train_rows.empty:
        raise DataError(patches_dir or ctx.paths.patches, "the patch set has no training patches")
    train_set = PatchDataset(train_rows, mean, train_cfg.augment, seed=ctx.seed,
                             augment_settings=train_cfg.augmentation, path_column="abs_path")
    val_set = PatchDataset(val_rows, mean, False, path_column="abs_path")
    spec = {"arch": model_cfg.arch, "num_classes": len(PATCH_CLASSES), "dropout": model_cfg.dropout}
    seed_everything(ctx.seed)
    model = build_model("patch", spec)
    weights = pretrained or model_cfg.pretrained
    if weights:
        load_pretrained_trunk(model, weights)
    result = train_patch_classifier(model, train_set, val_set, list(train_cfg.stages), ctx.device,
                                    batch_size=train_cfg.batch_size, seed=ctx.seed, augment=train_cfg.augment,
                                    num_workers=ctx.num_workers, progress=ctx.progress)
    patch_size = ctx.settings.patches.patch_size
    metrics = {"val_accuracy": result.best_metric, "best_epoch": result.best_epoch + 1,
               "train_patches": len(train_set), "val_patches": len(val_set), "seconds": result.seconds}
    save_checkpoint(ctx.paths.patch_model, model, kind="patch", model_spec=model.spec,
                    preprocessing={"height": patch_size, "width": patch_size, "mode": ctx.preprocessing["mode"],
                                   "mean": mean, "image_height": ctx.preprocessing["height"],
                                   "image_width": ctx.preprocessing["width"]},
                    class_names=PATCH_CLASSES,
                    provenance={"step": "train-patch", "index_dir": str(ctx.index_dir), "seed": ctx.seed,
                                "pretrained": weights or None, "history": result.history,
                                "patch_config": ctx.settings.patch_config()},
                    metrics=metrics)
    ctx.timings["train_patch"] = result.seconds
    log.info("patch classifier: val accuracy %.4f (epoch %d) -> %s", result.best_metric, result.best_epoch + 1,
             ctx.paths.patch_model)
    return metrics


def step_train_whole(ctx: RunContext, patch_model: Path | None = None, resume: bool = True) -> dict[str, Any]:
    """Convert the patch classifier and train it on whole images (2 stages) -> whole_image.pt."""
    patch = load_checkpoint(patch_model or ctx.paths.patch_model)
    if patch.kind != "patch":
        raise DataError(patch_model or ctx.paths.patch_model, f"expected a patch checkpoint, got {patch.kind!r}")
    whole_cfg, train_cfg = ctx.settings.whole_model, ctx.settings.whole_train
    size = [int(ctx.preprocessing["height"]), int(ctx.preprocessing["width"])]
    seed_everything(ctx.seed)
    model = convert_patch_to_whole(patch.model, whole_cfg.top_spec, dropout=whole_cfg.dropout, input_size=size)
    if not resume:
        ctx.paths.whole_state.unlink(missing_ok=True)
    train_set = ctx.whole_dataset("train", augment=train_cfg.augment, augment_settings=train_cfg.augmentation)
    val_set = ctx.whole_dataset("val")
    result = train_whole_classifier(
        model, train_set, val_set, list(train_cfg.stages), ctx.device, preprocessing=ctx.preprocessing,
        best_path=ctx.paths.whole_model, state_path=ctx.paths.whole_state,
        batch_size=train_cfg.batch_size, seed=ctx.seed, augment=train_cfg.augment,
        num_workers=ctx.num_workers, resume=resume, progress=ctx.progress,
        provenance={"step": "train-whole", "index_dir": str(ctx.index_dir), "seed": ctx.seed,
                    "patch_model": str(patch_model or ctx.paths.patch_model), "top": whole_cfg.top,
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


def _test_metrics(split: str, labels: np.ndarray, scores: np.ndarray, groups: np.ndarray, threshold: float,
                  n_boot: int, seed: int) -> dict[str, Any]:
    """AUC + bootstrap CI over patients, sensitivity/specificity at `threshold`, counts (no flips)."""
    summary = summarize_test_scores(labels, scores, threshold, groups=groups, n_boot=n_boot, seed=seed)
    return {
        f"{split}_auc": summary["auc"], f"{split}_auc_ci": summary["auc_ci"],
        "threshold": threshold, "sensitivity": summary["sensitivity"], "specificity": summary["specificity"],
        f"n_{split}": summary["n"], f"n_{split}_positive": summary["n_pos"],
    }


def _tta_metrics(split: str, labels: np.ndarray, tta_scores: np.ndarray, groups: np.ndarray, threshold: float,
                 n_boot: int, seed: int) -> dict[str, Any]:
    """The same figures for the flip-TTA scores (the paper's A-AUC)."""
    sens, spec = sens_spec_at(labels, tta_scores, threshold)
    return {f"{split}_a_auc": auc(labels, tta_scores),
            f"{split}_a_auc_ci": list(bootstrap_auc_ci(labels, tta_scores, n=n_boot, seed=seed, groups=groups)),
            "a_sensitivity": sens, "a_specificity": spec}


def step_evaluate(ctx: RunContext, checkpoints: list[Path] | None = None, out_dir: Path | None = None,
                  split: str = "test") -> dict[str, Any]:
    """Per-image AUC (+ bootstrap CI), A-AUC (flip TTA), sens/spec, ROC PNG, predictions CSV, metrics.json."""
    checkpoints = checkpoints or [ctx.paths.whole_model]
    out = Path(out_dir) if out_dir else ctx.paths.root
    out.mkdir(parents=True, exist_ok=True)
    ev = ctx.settings.evaluate
    test_set = ctx.whole_dataset(split)
    if len(test_set) == 0:
        raise DataError(ctx.index_dir, f"no {split} images to evaluate")
    start = time.perf_counter()
    labels = test_set.labels()
    groups = ctx.split_images(split)["patient_id"].astype(str).to_numpy()
    scores = _scores(checkpoints, test_set, ctx, False, ev.batch_size)
    metrics = _test_metrics(split, labels, scores, groups, ev.threshold, ev.bootstrap, ctx.seed)
    metrics["checkpoints"] = [str(c) for c in checkpoints]
    curves = {"AUC": roc_curve(labels, scores)} if len(np.unique(labels)) == 2 else {}
    tta_scores = None
    if ev.tta:
        tta_scores = _scores(checkpoints, test_set, ctx, True, ev.batch_size)
        metrics.update(_tta_metrics(split, labels, tta_scores, groups, ev.threshold, ev.bootstrap, ctx.seed))
        if curves:
            curves["A-AUC (flip TTA)"] = roc_curve(labels, tta_scores)
    val_set = ctx.whole_dataset("val")
    if len(val_set) and split != "val":
        metrics["val_auc"] = auc(val_set.labels(), _scores(checkpoints, val_set, ctx, False, ev.batch_size))
    else:
        metrics.setdefault("val_auc", float("nan"))
    write_predictions_csv(out / "predictions.csv", test_set.image_ids, scores, labels, tta_scores=tta_scores)
    if curves:
        plot_roc(out / "roc.png", curves, title=f"{split} ROC ({len(labels)} images)")
    metrics["seconds"] = time.perf_counter() - start
    metrics["skipped_images"] = len(ctx.skipped)
    ctx.timings["evaluate"] = metrics["seconds"]
    write_json(out / "metrics.json", metrics)
    log.info("%s AUC %.4f [%.3f, %.3f]%s", split, metrics[f"{split}_auc"], *metrics[f"{split}_auc_ci"],
             f", A-AUC {metrics[f'{split}_a_auc']:.4f}" if ev.tta else "")
    return metrics


def step_baseline(ctx: RunContext, patch_model: Path | None = None, split: str = "test") -> dict[str, Any]:
    """Two-step baseline: patch heatmaps of whole images -> regional features -> random forest."""
    patch = load_checkpoint(patch_model or ctx.paths.patch_model, ctx.device)
    settings = ctx.settings.require_baseline()
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
           f"baseline_{split}_auc_ci": list(bootstrap_auc_ci(test_y, scores, n=ctx.settings.evaluate.bootstrap,
                                                             seed=ctx.seed, groups=groups)),
           "heatmap_window": window, "features": int(model.features(train_maps[:1]).shape[1]),
           "seconds": time.perf_counter() - start}
    write_json(ctx.paths.root / "baseline.json", out)
    # same columns as predictions.csv, so `mammo-train compare` can pair the two designs image by image
    write_predictions_csv(ctx.paths.root / f"baseline_predictions_{split}.csv", test_set.image_ids, scores, test_y)
    log.info("two-step baseline: %s AUC %.4f", split, out[f"baseline_{split}_auc"])
    return out


def _reusable_patch_model(ctx: RunContext) -> bool:
    if not ctx.paths.patch_model.is_file():
        return False
    try:
        meta = read_checkpoint_meta(ctx.paths.patch_model)
    except DataError:
        return False
    return meta.get("provenance", {}).get("patch_config") == json.loads(json.dumps(ctx.settings.patch_config()))


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
