"""`mammo-sim`: transfer curves across virtual sites on Flower's Simulation Engine.

    mammo-sim --preset {quick,full,paper} --out DIR [--model CKPT]
              [--inbreast SRC | --sites-dir DIR] [--ray-address HOST:PORT] [--set key=value ...]
    mammo-sim compare RUN_A[:METHOD] RUN_B[:METHOD] [--out FILE.csv] [--resamples N]

Writes DIR/transfer_curve.csv, DIR/transfer_table.csv, DIR/transfer_curve.png, DIR/run.json and
DIR/predictions/ (per-image validation scores of every arm), and prints the Table-4-like summary
and the plot path. `compare` pairs two arms image by image (simulations/pairs.py).
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
    parser.add_argument("--ray-address", default=None, metavar="HOST:PORT",
                        help="run the virtual sites on this existing Ray cluster (= --set flower.ray_address=...); "
                        "per-site resources: [flower] client_num_cpus / client_num_gpus")
    parser.add_argument("--run-config", dest="run_config", action="append", default=[], metavar="KEY=VALUE",
                        help="a Flower run-config key for the federated arm, e.g. strategy=fedmedian, "
                        "dp.noise-multiplier=0.5, test-faults='site_02=scale:1000' (repeatable; keys of "
                        "server/flower_app/pyproject.toml)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="where source models, synthetic data and image caches are kept "
                        "(default: $MAMMO_FL_CACHE or ~/.cache/mammo-fl)")
    return parser


def build_compare_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mammo-sim compare",
        description="AUC(A) - AUC(B) of two arms on the same validation images, per seed, mean over seeds "
        "and mean over every size and seed, with patient-level paired bootstrap CIs. An arm is RUN (its "
        "federated arm) or RUN:pooled / RUN:federated; RUN,RUN,... joins runs of one grid (sizes run apart).")
    parser.add_argument("arm_a", help="RUN_A[,RUN...][:METHOD]")
    parser.add_argument("arm_b", help="RUN_B[,RUN...][:METHOD]")
    parser.add_argument("--out", type=Path, default=None, help="also write the per-seed rows and the means as CSV")
    parser.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples (default 2000)")
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, argv)


def _compare(argv: list[str]) -> int:
    import pandas as pd

    from mammo_fl.simulations.pairs import Arm, compare_arms, format_comparison

    args = build_compare_parser().parse_args(argv)
    a, b = Arm.parse(args.arm_a), Arm.parse(args.arm_b)
    result = compare_arms(a, b, resamples=args.resamples)
    print(format_comparison(a, b, result))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        rows = pd.concat([result.per_seed.assign(kind="seed"), result.summary.assign(kind="mean"),
                          result.overall.assign(kind="overall")], ignore_index=True)
        rows.to_csv(args.out, index=False)
        print(f"comparison: {args.out}")
    return 0


def _interrupt_on_sigterm() -> None:
    """SIGTERM (timeout, kill) becomes KeyboardInterrupt, so Ray is shut down instead of orphaned."""
    import signal

    def _raise(signum, frame):  # noqa: ANN001 - signal handler signature
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _raise)


def _main(argv: list[str] | None) -> int:
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["compare"]:
        return _compare(argv[1:])
    args = build_parser().parse_args(argv)
    if args.ray_address is not None:
        args.overrides = [*args.overrides, f"flower.ray_address={args.ray_address!r}"]
    _interrupt_on_sigterm()
    from mammo_fl.common.utils.config import load_config
    from mammo_fl.simulations.settings import parse_settings

    settings = parse_settings(load_config(args.preset, "sim", args.overrides))  # fail fast, before torch/Flower load
    if settings.flower.ray_address:
        from mammo_fl.simulations.flower_sim import check_ray_address

        check_ray_address(settings.flower.ray_address)  # not after minutes of source-model building
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
