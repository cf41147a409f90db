"""The coordinator: Flower ServerApp, strategies and mammo-server."""
