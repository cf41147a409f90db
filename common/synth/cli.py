"""`mammo-data synth ...`: write a synthetic dataset, or a preview PNG of one.

    mammo-data synth --layout inbreast --out data/inbreast --patients 115 --seed 0
    mammo-data synth --layout cbis-ddsm --out data/cbis --patients 200 --cbis-tree classic
    mammo-data synth --layout manifest --out data/sites --patients 300 --sites 4 --domain mixed
    mammo-data synth --preview data/sites --out preview.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mammo_fl.common.utils.config import load_config
from mammo_fl.common.utils.errors import ConfigError

FLAG_KEYS = ("layout", "patients", "seed", "domain", "sites", "prevalence", "conspicuity", "lesion_scale",
             "secondary_signs", "vendor", "cbis_tree", "workers")


def _size(text: str) -> tuple[int, int]:
    """`288x224` (height x width)."""
    try:
        h, w = (int(v) for v in text.lower().replace(",", "x").split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be HEIGHTxWIDTH, e.g. 288x224 (got {text!r})") from None
    return h, w


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--layout", choices=["cbis-ddsm", "inbreast", "manifest"], help="on-disk layout to write")
    parser.add_argument("--out", type=Path, help="output folder (dataset), or PNG file with --preview")
    parser.add_argument("--patients", type=int, help="number of patients (manifest: total over all sites)")
    parser.add_argument("--seed", type=int, help="random seed (same seed -> identical dataset)")
    parser.add_argument("--domain", choices=["film", "ffdm", "mixed"],
                        help="acquisition domain (default: cbis-ddsm film, others ffdm; mixed: manifest only)")
    parser.add_argument("--sites", type=int, help="manifest layout: number of hospital folders")
    parser.add_argument("--site-names", help="comma-separated site folder names (default site-1..site-K)")
    parser.add_argument("--size", type=_size, help="image size HEIGHTxWIDTH (default: native ~1152x896 scale)")
    parser.add_argument("--prevalence", type=float, help="share of positive patients (cbis-ddsm: malignant abnormalities)")
    parser.add_argument("--conspicuity", type=float, help="lesion contrast multiplier (default 1)")
    parser.add_argument("--lesion-scale", dest="lesion_scale", type=float, help="lesion size multiplier (default 1)")
    parser.add_argument("--secondary-signs", dest="secondary_signs", type=float,
                        help="share of malignant images that also show skin thickening, a sign away from the "
                        "lesion that only whole-image models can use (default 0)")
    parser.add_argument("--vendor", help="force one vendor profile (cbis-ddsm / inbreast)")
    parser.add_argument("--vendors", help="inbreast: comma-separated vendor profiles; each patient is imaged by "
                        "one of them, label-balanced (a multi-vendor cohort)")
    parser.add_argument("--cbis-tree", dest="cbis_tree", choices=["descriptive", "classic"],
                        help="CBIS-DDSM folder naming (default descriptive, as the NBIA retriever writes)")
    parser.add_argument("--workers", type=int, help="parallel processes (default: all cores)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier synthetic dataset in --out")
    parser.add_argument("--preset", default="default", help="synth preset name or TOML file (common/presets/synth_*.toml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a preset value (repeatable)")
    parser.add_argument("--preview", type=Path, metavar="DIR", help="write a PNG grid of DIR's images to --out")
    parser.add_argument("--preview-count", type=int, default=12, help="images in the preview grid")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    if args.out is None:
        raise ConfigError("--out is required (dataset folder, or PNG file with --preview)")
    if args.preview is not None:
        from mammo_fl.common.synth.preview import render_preview

        out = render_preview(args.preview, args.out, n=args.preview_count)
        print(f"wrote {out}")
        return 0
    from mammo_fl.common.synth.generate import SynthConfig, generate

    cfg = load_config(args.preset, "synth", args.overrides)
    for key in FLAG_KEYS:
        value = getattr(args, key, None)
        if value is not None:
            cfg[key] = value
    size = args.size or ((int(cfg["height"]), int(cfg["width"])) if cfg.get("height") and cfg.get("width") else None)
    prevalence = cfg.get("prevalence", -1.0)
    site_names = tuple(s.strip() for s in args.site_names.split(",")) if args.site_names else None
    config = SynthConfig(
        layout=str(cfg["layout"]), out_dir=args.out, patients=int(cfg["patients"]), seed=int(cfg["seed"]),
        domain=str(cfg["domain"]) or None, sites=int(cfg["sites"]), size=size,
        prevalence=None if prevalence is None or float(prevalence) < 0 else float(prevalence),
        conspicuity=float(cfg["conspicuity"]), lesion_scale=float(cfg["lesion_scale"]),
        secondary_signs=float(cfg.get("secondary_signs", 0.0)), vendor=str(cfg["vendor"]) or None,
        vendors=tuple(v.strip() for v in args.vendors.split(",") if v.strip()) if args.vendors else None,
        cbis_tree=str(cfg["cbis_tree"]), site_names=site_names,
        workers=int(cfg["workers"]) or None, overwrite=args.overwrite, progress=not args.quiet,
    )
    out = generate(config)
    print(f"wrote {config.layout} dataset to {out} (ground truth: {out / 'ground_truth.csv'})")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (`python -m common.synth.cli`), same options as `mammo-data synth`."""
    from mammo_fl.common.cli import run_cli

    def _main(a: list[str] | None) -> int:
        parser = argparse.ArgumentParser(prog="mammo-data synth", description=__doc__,
                                         formatter_class=argparse.RawDescriptionHelpFormatter)
        add_arguments(parser)
        return run(parser.parse_args(a))

    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
