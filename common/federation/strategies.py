"""The one table of aggregation strategies: name -> Flower strategy class (flwr.serverapp.strategy).

Used by the coordinator (server/strategy.py builds the objects), `mammo-server --set strategy=...`
and mammo-sim's presets. FedBN is not a strategy here but a flag (`fedbn`): it keeps BatchNorm
at the sites and combines with any strategy.
"""

from __future__ import annotations

from mammo_fl.common.utils.errors import ConfigError

# name -> (Flower class name, what it does)
STRATEGIES: dict[str, tuple[str, str]] = {
    "fedavg": ("FedAvg", "weighted mean of the site weights (McMahan et al. 2017)"),
    "fedprox": ("FedProx", "FedAvg; each site adds mu/2 ||w - w_global||^2 to its loss"),
    "fedavgm": ("FedAvgM", "FedAvg with a server step size and heavy-ball momentum on the averaged update "
                           "(Hsu et al. 2019; server-lr, server-momentum)"),
    "fedadam": ("FedAdam", "server-side Adam on the averaged update (FedOpt)"),
    "fedyogi": ("FedYogi", "server-side Yogi on the averaged update (FedOpt)"),
    # Byzantine-robust (Yin et al. 2018; Blanchard et al. 2017): they ignore num-examples for the
    # weights themselves, so a site cannot buy influence by claiming more examples.
    "fedmedian": ("FedMedian", "coordinate-wise median of the site weights"),
    "fedtrimmedavg": ("FedTrimmedAvg", "coordinate-wise mean after cutting `trimmed-beta` of each tail"),
    "krum": ("Krum", "the one site update closest to its n - f - 2 nearest others (f = `krum-malicious`)"),
}

# Strategies whose aggregate is the (example- or uniformly-) weighted mean of the updates: the only
# ones for which server-side DP noise of std noise-multiplier x clip-norm / sites is calibrated.
MEAN_STRATEGIES = ("fedavg", "fedprox")


def check_strategy(name: str, what: str = "strategy") -> str:
    """`name` when it is a known strategy, else a one-line ConfigError listing the choices."""
    if name not in STRATEGIES:
        raise ConfigError(f"{what} {name!r} unknown; choose one of {', '.join(STRATEGIES)}")
    return name
