"""`mammo-sim`: transfer curves across virtual sites on Flower's Simulation Engine.

    mammo-sim --preset {quick,full,paper} --out DIR [--model CKPT]
              [--inbreast SRC | --sites-dir DIR] [--set key=value ...]

Writes DIR/transfer_curve.csv, DIR/transfer_table.csv, DIR/transfer_curve.png and
DIR/run.json, and prints the Table-4-like summary and the plot path.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mammo_fl.common.cli import run_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mammo-sim",
        description="Reproduce the INbreast small-data transfer curves (Shen et al. 2019, Table 4) with pooled, "
        "federated (Flower simulation) and single-site fine-tuning across virtual sites.",
    )
    parser.add_argument("--preset", default="quick",
                        help="quick | full | paper, or a TOML file (default: quick)")
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument("--model", type=Path, default=None,
                        help="whole-image checkpoint from mammo-train (default: build one on synthetic DDSM-like "
                        "data with the CPU training preset, cached)")
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--inbreast", type=Path, default=None, help="an INbreast release folder (INbreast layout)")
    target.add_argument("--sites-dir", type=Path, default=None,
                        help="a folder of site folders, each with manifest.csv (their union is the target data)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a preset value, e.g. --set experiment.seeds=[0,1] (repeatable)")
    parser.add_argument("--run-config", dest="run_config", action="append", default=[], metavar="KEY=VALUE",
                        help="a Flower run-config key for the federated arm, e.g. strategy=fedmedian, "
                        "dp.noise-multiplier=0.5, test-faults='site_02=scale:1000' (repeatable; keys of "
                        "server/flower_app/pyproject.toml)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="where source models, synthetic data and image caches are kept "
                        "(default: $MAMMO_FL_CACHE or ~/.cache/mammo-fl)")
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, argv)


def _interrupt_on_sigterm() -> None:
    """SIGTERM (timeout, kill) becomes KeyboardInterrupt, so Ray is shut down instead of orphaned."""
    import signal

    def _raise(signum, frame):  # noqa: ANN001 - signal handler signature
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _raise)


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    _interrupt_on_sigterm()
    from mammo_fl.common.utils.config import load_config
    from mammo_fl.simulations.settings import parse_settings

    parse_settings(load_config(args.preset, "sim", args.overrides))  # fail fast, before torch/Flower load
    run_config = parse_run_config(args.run_config)
    from mammo_fl.simulations.driver import run_simulation_study

    run_simulation_study(
        preset=args.preset,
        out_dir=args.out,
        overrides=args.overrides,
        model=args.model,
        inbreast=args.inbreast,
        sites_dir=args.sites_dir,
        cache_dir=args.cache_dir,
        run_config=run_config,
    )
    return 0


def parse_run_config(items: list[str]) -> dict:
    """`dp.noise-multiplier=0.5` -> {"dp.noise-multiplier": 0.5}; unknown keys and bad values fail here."""
    from mammo_fl.common.federation.flower_private import fused_run_config
    from mammo_fl.common.utils.config import parse_override
    from mammo_fl.server.settings import FederationSettings
    from mammo_fl.simulations.flower_sim import APP_DIR

    extra = {}
    for item in items:
        keys, value = parse_override(item)
        extra[".".join(keys)] = value
    FederationSettings.from_run_config(fused_run_config(APP_DIR, extra))  # known keys, valid values
    return extra


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
