"""`mammo-data`: index a dataset, split its patients, fill the preprocessing cache, synth.

    mammo-data index --format {cbis-ddsm,inbreast,manifest} SRC --out OUTDIR
    mammo-data split --index OUTDIR --scheme {ddsm,inbreast} --seed N
    mammo-data preprocess --index OUTDIR --size 1152x896 [--mode paper|crop] [--workers N]
    mammo-data synth ...            (engineer B's generator, loaded only when used)
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import pandas as pd

from mammo_fl.common.cli import run_cli
from mammo_fl.common.utils.errors import DataError, MammoError

SHOW_SKIPPED = 10


def _print_skipped(skipped: list[tuple[str, str]], out_dir: Path | None, what: str = "files") -> None:
    if not skipped:
        print(f"skipped: 0 {what}")
        return
    kinds = Counter(reason.split(":")[0].split(" (")[0] for _, reason in skipped)
    print(f"skipped: {len(skipped)} {what} - " + "; ".join(f"{n} x {k}" for k, n in kinds.most_common(6)))
    for path, reason in skipped[:SHOW_SKIPPED]:
        print(f"  {path}: {reason}")
    if out_dir is not None:
        dest = out_dir / "skipped.csv"
        pd.DataFrame(skipped, columns=["path", "reason"]).to_csv(dest, index=False)
        if len(skipped) > SHOW_SKIPPED:
            print(f"  ... and {len(skipped) - SHOW_SKIPPED} more (all listed in {dest})")


def cmd_index(args: argparse.Namespace) -> int:
    from mammo_fl.common.imaging.adapters import build_index
    from mammo_fl.common.imaging.index import summarise, write_index

    src, out = Path(args.src), Path(args.out)
    if not src.exists():
        raise DataError(src, "source folder not found")
    tables = build_index(args.format, src, out)
    out.mkdir(parents=True, exist_ok=True)
    if tables.images.empty:
        _print_skipped(tables.skipped, out)
        raise DataError(src, f"no usable {args.format} images found ({len(tables.skipped)} files skipped)")
    write_index(out, tables.images, tables.rois)
    counts = summarise(tables.images)
    rois = "" if tables.rois is None else f", {len(tables.rois)} ROIs"
    print(f"indexed {counts['images']} images, {counts['patients']} patients, {counts['positives']} positive{rois}"
          f" -> {out / 'images.csv'}")
    _print_skipped(tables.skipped, out)
    return 0


def _split_scheme(args: argparse.Namespace) -> str | dict[str, float]:
    from mammo_fl.common.imaging.splits import parse_fractions

    return parse_fractions(args.fractions) if args.fractions else args.scheme


def cmd_split(args: argparse.Namespace) -> int:
    from mammo_fl.common.imaging.index import load_index, write_split
    from mammo_fl.common.imaging.splits import split_patients, split_summary

    tables = load_index(args.index)
    patients = set(tables.images["patient_id"].astype(str))
    if tables.split is not None and not args.force:
        if set(tables.split["patient_id"]) != patients:
            raise DataError(Path(args.index) / "split.csv", "exists but does not cover this index's patients; "
                            "pass --force to replace it")
        print(f"reusing existing {Path(args.index) / 'split.csv'} (pass --force to draw a new one)")
        split = tables.split
    else:
        split = split_patients(tables.images, _split_scheme(args), seed=args.seed)
        write_split(args.index, split)
        print(f"wrote {Path(args.index) / 'split.csv'} (seed {args.seed})")
    print(split_summary(tables.images, split).to_string(index=False))
    return 0


def cmd_preprocess(args: argparse.Namespace) -> int:
    from mammo_fl.common.imaging.index import load_index
    from mammo_fl.common.imaging.cache import ImageCache, default_cache_root, mean_grey
    from mammo_fl.common.imaging.geometry import PreprocessSettings, parse_size

    tables = load_index(args.index)
    height, width = parse_size(args.size)
    settings = PreprocessSettings(height, width, args.mode)
    root = Path(args.cache) if args.cache else default_cache_root(args.index)
    cache = ImageCache(root, settings, min_side=args.min_side)
    pairs: list[tuple[str, str]] = []
    if tables.rois is not None and not tables.rois.empty and not args.no_masks:
        paths = dict(zip(tables.images["image_id"], tables.images["image_path"]))
        pairs = [(m, paths[i]) for m, i in zip(tables.rois["mask_path"], tables.rois["image_id"]) if i in paths]
    report, masks = cache.build_with_masks(tables.images["image_path"].tolist(), pairs, workers=args.workers,
                                           progress=not args.quiet)
    print(f"images: {report.done} cached ({report.computed} new) in {report.seconds:.1f} s "
          f"= {report.per_second:.2f} images/s{' (with masks)' if pairs else ''}, workers={args.workers or 'all cores'} -> {cache.directory}")
    _print_skipped(report.skipped, None, "images")
    if pairs:
        print(f"masks: {masks.done} cached ({masks.computed} new)")
        _print_skipped(masks.skipped, None, "masks")
    if report.done == 0:
        raise DataError(args.index, "no image could be preprocessed")
    bad = {p for p, _ in report.skipped}
    images = tables.images[~tables.images["image_path"].isin(bad)]
    if tables.split is not None:
        train_patients = set(tables.split.loc[tables.split["split"] == "train", "patient_id"])
        images = images[images["patient_id"].astype(str).isin(train_patients)]
    try:
        mean = mean_grey(cache, images["image_path"])
    except DataError as exc:
        print(f"mean grey: not computed ({exc.cause})")
        return 0
    over = "train split" if tables.split is not None else "all images"
    print(f"mean grey (0..255) over {over} ({len(images)} images): {mean:.2f} (the data.mean of a train preset)")
    return 0


def cmd_synth(argv: list[str]) -> int:
    try:
        from mammo_fl.common.synth import cli as synth_cli
    except ImportError as exc:
        raise MammoError(f"the synthetic generator is not available in this installation ({exc})") from None
    parser = argparse.ArgumentParser(prog="mammo-data synth", description="Generate synthetic mammograms (DICOM).")
    synth_cli.add_arguments(parser)
    return int(synth_cli.run(parser.parse_args(argv)) or 0)


def build_parser() -> argparse.ArgumentParser:
    from mammo_fl.common.imaging.dicom import MIN_SIDE_ENV

    parser = argparse.ArgumentParser(prog="mammo-data", description="Dataset indexing, splits and preprocessing.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("index", help="turn a dataset's layout into OUTDIR/images.csv (+ rois.csv)")
    p.add_argument("--format", required=True, choices=["cbis-ddsm", "inbreast", "manifest"])
    p.add_argument("src", help="dataset folder (CBIS-DDSM download, INbreast release, or a site folder with manifest.csv)")
    p.add_argument("--out", required=True, help="index directory to write")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("split", help="patient-level stratified split -> OUTDIR/split.csv")
    p.add_argument("--index", required=True, help="index directory")
    p.add_argument("--scheme", choices=["ddsm", "inbreast"], default="ddsm",
                   help="ddsm: 85/15 train/test + 10%% of train to val; inbreast: 70/30 train/val")
    p.add_argument("--fractions", help="custom, e.g. train=0.7,val=0.15,test=0.15 (overrides --scheme)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="replace an existing split.csv")
    p.set_defaults(func=cmd_split)

    p = sub.add_parser("preprocess", help="fill the 16-bit PNG cache (images and ROI masks)")
    p.add_argument("--index", required=True, help="index directory")
    p.add_argument("--size", default="1152x896", help="HEIGHTxWIDTH (default 1152x896)")
    p.add_argument("--mode", choices=["paper", "crop"], default="paper")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--cache", help="cache root (default OUTDIR/cache)")
    p.add_argument("--min-side", type=int, default=None,
                   help=f"smallest accepted image side in pixels (default 200, or ${MIN_SIDE_ENV})")
    p.add_argument("--no-masks", action="store_true", help="images only")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_preprocess)

    sub.add_parser("synth", help="generate synthetic mammograms (see `mammo-data synth -h`)", add_help=False)
    return parser


def _main(argv: list[str] | None) -> int:
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "synth":  # imported only when used, so the rest works without it
        return cmd_synth(argv[1:])
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
