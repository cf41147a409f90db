"""`mammo-train`: the Shen et al. pipeline (patches -> patch classifier -> whole-image classifier -> evaluation).

    mammo-train run --preset cpu --data INDEXDIR --out RUNDIR [--set key=value ...]
    mammo-train patches | train-patch | train-whole | evaluate | baseline  (one step at a time, same RUNDIR)
    mammo-train compare A.csv B.csv   (paired AUC difference of two designs on one test set)
    mammo-train predict --model CKPT (--data INDEXDIR | DICOM_OR_FOLDER ...) --out preds.csv [--tta] [--threshold T]
    mammo-train explain --model CKPT --data INDEXDIR --out DIR [--method patch|cam]   (heatmap overlays)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mammo_fl.common.models.checkpoint import load_checkpoint
from mammo_fl.common.cli import run_cli
from mammo_fl.common.training.datasets import UNLABELLED, WholeImageDataset
from mammo_fl.common.utils.device import select_device
from mammo_fl.common.utils.errors import ConfigError, DataError
from mammo_fl.common.evaluation.inference import ensemble_scores, write_predictions_csv
from mammo_fl.common.imaging.index import load_index
from mammo_fl.common.imaging.cache import ImageCache, default_cache_root, filter_readable
from mammo_fl.common.imaging.geometry import PreprocessSettings

log = logging.getLogger("mammo-train")


def _context(args: argparse.Namespace):
    # torch-heavy imports only when a command runs
    from mammo_fl.common.pipeline.rundir import open_run
    from mammo_fl.common.pipeline.settings import load_run_settings

    settings = load_run_settings(args.preset, args.set, device=getattr(args, "device", None),
                                 progress=False if getattr(args, "quiet", False) else None)
    return open_run(settings, args.data, args.out)


def _print_json(data: dict[str, Any]) -> None:
    from mammo_fl.common.utils.jsonable import jsonable

    keep = {k: v for k, v in data.items() if k != "history"}
    print(json.dumps(jsonable(keep), indent=1, default=str))


def cmd_run(args: argparse.Namespace) -> int:
    from mammo_fl.common.pipeline.steps import run_pipeline

    ctx = _context(args)
    metrics = run_pipeline(ctx, pretrained=args.pretrained, resume=not args.restart)
    if args.baseline:
        from mammo_fl.common.utils.jsonable import write_json
        from mammo_fl.common.pipeline.steps import step_baseline

        metrics.update(step_baseline(ctx))
        write_json(ctx.paths.metrics, metrics)
    _print_json(metrics)
    print(f"wrote {ctx.paths.whole_model}, {ctx.paths.metrics}, {ctx.paths.roc}, {ctx.paths.predictions}")
    return 0


def cmd_patches(args: argparse.Namespace) -> int:
    from mammo_fl.common.pipeline.steps import step_patches

    ctx = _context(args)
    report = step_patches(ctx)
    for split, counts in report.counts.items():
        print(f"{split}: " + ", ".join(f"{c} {n}" for c, n in counts.items()))
    print(f"{report.images} images, {len(report.skipped)} problems{' (reused)' if report.reused else ''} "
          f"-> {report.out_dir}")
    for image_id, reason in report.skipped[:10]:
        print(f"  skipped {image_id}: {reason}")
    return 0


def cmd_train_patch(args: argparse.Namespace) -> int:
    from mammo_fl.common.pipeline.steps import step_train_patch

    ctx = _context(args)
    _print_json(step_train_patch(ctx, pretrained=args.pretrained,
                                 patches_dir=Path(args.patches) if args.patches else None))
    return 0


def cmd_train_whole(args: argparse.Namespace) -> int:
    from mammo_fl.common.pipeline.steps import step_train_whole

    ctx = _context(args)
    _print_json(step_train_whole(ctx, patch_model=Path(args.patch_model) if args.patch_model else None,
                                 resume=not args.restart))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from mammo_fl.common.pipeline.steps import step_evaluate

    ctx = _context(args)
    models = [Path(m) for m in args.model] if args.model else None
    metrics = step_evaluate(ctx, models, out_dir=Path(args.eval_out) if args.eval_out else None, split=args.split)
    _print_json(metrics)
    return 0


def cmd_baseline(args: argparse.Namespace) -> int:
    from mammo_fl.common.pipeline.steps import step_baseline

    ctx = _context(args)
    _print_json(step_baseline(ctx, patch_model=Path(args.patch_model) if args.patch_model else None,
                              split=args.split))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from mammo_fl.common.pipeline.compare import compare_predictions

    r = compare_predictions(args.a, args.b, index_dir=args.data, n=args.bootstrap, seed=args.seed)
    unit = "patients" if args.data else "images"
    print(f"{r.n} images ({r.n_pos} malignant), paired bootstrap over {unit}, {args.bootstrap} resamples")
    print(f"  A  {args.a}: AUC {r.auc_a:.4f}")
    print(f"  B  {args.b}: AUC {r.auc_b:.4f}")
    print(f"  A - B = {r.difference:+.4f}  95% CI [{r.ci[0]:+.4f}, {r.ci[1]:+.4f}]  "
          f"A higher in {100 * r.share_a_better:.1f}% of resamples")
    if args.json:
        from mammo_fl.common.utils.jsonable import write_json

        write_json(Path(args.json), {"a": args.a, "b": args.b, **dataclasses.asdict(r), "resampled": unit,
                                     "bootstrap": args.bootstrap, "seed": args.seed})
    return 0


def _dicom_files(items: list[str]) -> list[Path]:
    files: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in (".dcm", ".dicom", ""))
            if not found:
                raise DataError(path, "folder holds no DICOM files (*.dcm)")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise DataError(path, "file not found")
    return files


def cmd_predict(args: argparse.Namespace) -> int:
    if bool(args.data) == bool(args.dicoms):
        raise ConfigError("give either --data INDEXDIR or DICOM files/folders (not both)")
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise ConfigError(f"--threshold must be in [0, 1], got {args.threshold}")
    device = select_device(args.device or "auto")
    first = load_checkpoint(args.model[0], device)
    if first.kind != "whole_image":
        raise DataError(args.model[0], f"expected a whole-image checkpoint, got {first.kind!r}")
    prep = first.preprocessing
    settings = PreprocessSettings(int(prep["height"]), int(prep["width"]), str(prep.get("mode", "paper")))
    with tempfile.TemporaryDirectory(prefix="mammo-predict-") as tmp:
        if args.data:
            tables = load_index(args.data)
            images = tables.images.copy()
            if args.split:
                images = tables.images_with_split()
                images = images[images["split"] == args.split]
            cache_root = Path(args.cache) if args.cache else default_cache_root(args.data)
        else:
            files = _dicom_files(args.dicoms)
            images = pd.DataFrame({"image_id": [f.stem if f.stem not in ("1-1", "000000") else
                                                f"{f.parent.name}_{f.stem}" for f in files],
                                   "image_path": [str(f) for f in files]})
            cache_root = Path(args.cache) if args.cache else Path(tmp)
        cache = ImageCache(cache_root, settings)
        images, skipped = filter_readable(images, cache, progress=not args.quiet, workers=args.workers or None)
        for path, reason in skipped:
            print(f"skipped {path}: {reason}")
        if images.empty:
            raise DataError(None, "no readable images to score")
        dataset = WholeImageDataset(images, cache, float(prep["mean"]), augment=False)
        members = [first] + [load_checkpoint(m, device) for m in args.model[1:]]
        scores = ensemble_scores(members, dataset, device, tta=args.tta, batch_size=args.batch_size,
                                 progress=not args.quiet)
    labels = dataset.labels()
    threshold = _recall_threshold(args, first)
    out = write_predictions_csv(args.out, dataset.image_ids, scores, labels if (labels != UNLABELLED).all() else None,
                                threshold=threshold)
    print(f"scored {len(scores)} images ({len(skipped)} skipped){' with flip TTA' if args.tta else ''} -> {out}")
    if threshold is not None:
        print(f"recall column: malignant_prob >= {threshold:.4f}; {int((scores >= threshold).sum())} of "
              f"{len(scores)} images recalled")
    if (labels != UNLABELLED).all() and len(np.unique(labels)) == 2:
        from mammo_fl.common.evaluation.metrics import auc

        print(f"AUC {auc(labels, scores):.4f}")
    return 0


def _recall_threshold(args: argparse.Namespace, first: Any) -> float | None:
    """--threshold, else the operating point the (single) checkpoint carries (federated final.pt), else None."""
    from mammo_fl.common.evaluation.operating_point import checkpoint_threshold

    if args.threshold is not None:
        return float(args.threshold)
    threshold = checkpoint_threshold(first.metrics)
    if threshold is None:
        return None
    if len(args.model) > 1:
        print("note: an ensemble's scores differ from its first member's; no recall column without --threshold")
        return None
    point = first.metrics["operating_point"]
    target = point.get("target") or {}
    print(f"operating point of {args.model[0]}: threshold {threshold:.4f} ({target.get('kind')} target "
          f"{target.get('value')}, chosen in round {point.get('round')})")
    if bool(point.get("tta", False)) != bool(args.tta):
        print(f"note: the threshold was chosen on scores {'with' if point.get('tta') else 'without'} flip TTA; "
              f"this run is {'with' if args.tta else 'without'}")
    return threshold


def cmd_explain(args: argparse.Namespace) -> int:
    from mammo_fl.common.pipeline.explain_run import ExplainSettings, run_explain
    from mammo_fl.common.utils.device import set_cpu_threads

    set_cpu_threads(args.threads)
    r = run_explain(ExplainSettings(
        model=Path(args.model), data=Path(args.data), out=Path(args.out), split=args.split, images=args.images,
        method=args.method, patch_model=Path(args.patch_model) if args.patch_model else None, dicom=args.dicom,
        cache=Path(args.cache) if args.cache else None, batch_size=args.batch_size, workers=args.workers or None,
        device=args.device or "auto", progress=not args.quiet))
    for path, reason in r.skipped:
        print(f"skipped {path}: {reason}")
    print(f"{len(r.table)} images ({r.scope}), {args.method} heatmaps in {r.seconds:.1f} s -> {r.csv}")
    if r.pointing is None:
        print("no ROI annotations in the index: no localisation score")
    elif r.pointing.images:
        p = r.pointing
        print(f"pointing game {p.accuracy:.3f} ({p.hits}/{p.images} malignant images with the peak in a malignant "
              f"ROI; a random breast pixel: {p.chance:.3f}); mean heatmap mass inside ROIs {p.mean_roi_mass:.3f}")
    else:
        print("no malignant image with a malignant ROI among these images: no pointing-game score")
    return 0


def _common(p: argparse.ArgumentParser, data: bool = True) -> None:
    p.add_argument("--preset", default="cpu", help="train preset name (cpu, paper) or a TOML file")
    if data:
        p.add_argument("--data", required=True, help="index directory (mammo-data index + split)")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a preset value, e.g. --set whole_train.stage1.epochs=2 (repeatable)")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:1")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mammo-train", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="the whole pipeline: patches, patch classifier, whole-image classifier, evaluation")
    _common(p)
    p.add_argument("--pretrained", help="local torchvision ImageNet weights for the patch trunk")
    p.add_argument("--restart", action="store_true", help="ignore finished steps / resume state in RUNDIR")
    p.add_argument("--baseline", action="store_true", help="also fit the two-step heatmap + random forest baseline")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("patches", help="sample the S1/S10 patch set into RUNDIR/patches")
    _common(p)
    p.set_defaults(func=cmd_patches)

    p = sub.add_parser("train-patch", help="3-stage patch classifier -> RUNDIR/patch_model.pt")
    _common(p)
    p.add_argument("--pretrained", help="local torchvision ImageNet weights for the trunk")
    p.add_argument("--patches", help="patch-set folder (default RUNDIR/patches)")
    p.set_defaults(func=cmd_train_patch)

    p = sub.add_parser("train-whole", help="convert + 2-stage whole-image training -> RUNDIR/whole_image.pt")
    _common(p)
    p.add_argument("--patch-model", help="patch checkpoint (default RUNDIR/patch_model.pt)")
    p.add_argument("--restart", action="store_true", help="ignore RUNDIR/whole_state.pt (no resume)")
    p.set_defaults(func=cmd_train_whole)

    p = sub.add_parser("evaluate", help="AUC + CI, A-AUC, ROC, predictions on a split")
    _common(p)
    p.add_argument("--model", action="extend", nargs="+", metavar="CKPT",
                   help="whole-image checkpoint(s); several (--model A B, or --model repeated) = an ensemble "
                   "averaging their probabilities (default RUNDIR/whole_image.pt)")
    p.add_argument("--split", default="test", choices=["test", "val", "train"])
    p.add_argument("--eval-out", help="folder for metrics.json / roc.png / predictions.csv (default RUNDIR)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("baseline", help="two-step baseline: patch heatmap features + random forest")
    _common(p)
    p.add_argument("--patch-model", help="patch checkpoint (default RUNDIR/patch_model.pt)")
    p.add_argument("--split", default="test", choices=["test", "val"])
    p.set_defaults(func=cmd_baseline)

    p = sub.add_parser("compare", help="paired AUC difference of two predictions CSVs on the same images",
                       description="AUC(A) - AUC(B) with a paired bootstrap 95%% CI: both models are scored on the "
                       "same resamples, so the CI is that of the difference (e.g. RUNDIR/predictions.csv vs "
                       "RUNDIR/baseline_predictions_test.csv).")
    p.add_argument("a", help="predictions CSV of model A (image_id, malignant_prob, label)")
    p.add_argument("b", help="predictions CSV of model B, same images")
    p.add_argument("--data", help="index directory: resample patients (all their images together), not images")
    p.add_argument("--bootstrap", type=int, default=2000, help="resamples (default 2000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the figures to this JSON file")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("predict", help="score images with a whole-image checkpoint (or an ensemble)")
    p.add_argument("--model", action="append", required=True, help="whole-image checkpoint (repeat = ensemble)")
    p.add_argument("--data", help="index directory")
    p.add_argument("--split", help="only this split of --data (train|val|test)")
    p.add_argument("dicoms", nargs="*", help="DICOM files or folders")
    p.add_argument("--out", required=True, help="predictions CSV")
    p.add_argument("--tta", action="store_true", help="mean over the 4 flips (the paper's augmented prediction)")
    p.add_argument("--threshold", type=float, default=None,
                   help="recall threshold for the 0/1 `recall` column (default: the checkpoint's operating point, "
                   "when it carries one, e.g. a federated final.pt)")
    p.add_argument("--cache", help="preprocessing cache root (default INDEXDIR/cache, or a temporary folder)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--workers", type=int, default=0, help="processes preprocessing the images (0 = all cores)")
    p.add_argument("--device", help="auto (default), cpu, cuda")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("explain", help="heatmap overlays (PNG, optional DICOM) + explain.csv + pointing game")
    p.add_argument("--model", required=True, help="whole-image checkpoint (whole_image.pt, a federated final.pt)")
    p.add_argument("--data", required=True, help="index directory (mammo-data index [+ split])")
    p.add_argument("--out", required=True, help="output folder for the PNGs and explain.csv")
    p.add_argument("--split", choices=["test", "val", "train"],
                   help="default: test when the index has split.csv, else every image")
    p.add_argument("--images", type=int, help="the first N images of the split, malignant ones first (default all)")
    p.add_argument("--method", default="patch", choices=["patch", "cam"],
                   help="patch: the patch classifier slid over the image (paper Fig. 1); cam: the whole-image "
                   "model's class activation map (for a federated model without a patch net)")
    p.add_argument("--patch-model", help="patch classifier checkpoint (default: patch_model.pt beside --model)")
    p.add_argument("--dicom", action="store_true", help="also write DICOM Secondary Captures (not for diagnosis)")
    p.add_argument("--cache", help="preprocessing cache root (default INDEXDIR/cache)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--workers", type=int, default=0, help="processes preprocessing the images (0 = all cores)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default; 1 on shared cores)")
    p.add_argument("--device", help="auto (default), cpu, cuda")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_explain)
    return parser


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
