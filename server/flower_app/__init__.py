"""The Flower app (FAB) directory `flwr run` packs: pyproject.toml + the mammo_fab shim."""
