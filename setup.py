"""Package mapping only (metadata lives in pyproject.toml).

The repository's top-level folders install under one package name, `mammo_fl`, so that nothing
named `common`, `server`, `client` or `simulations` lands at the top of site-packages.
"""

from setuptools import find_packages, setup

LAYERS = ("common", "server", "client", "simulations")

packages = [f"mammo_fl.{name}" for name in find_packages(include=[f"{layer}*" for layer in LAYERS])]
setup(
    packages=packages,
    package_dir={f"mammo_fl.{layer}": layer for layer in LAYERS},
)
