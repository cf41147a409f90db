"""The Flower ServerApp (Message API). Heavy imports stay inside `main` (simulation imports this module)."""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    from mammo_fl.server.round_loop import run_round_loop
    from mammo_fl.server.settings import FederationSettings

    settings = FederationSettings.from_run_config(dict(context.run_config))
    run_round_loop(grid, settings, run_id=int(context.run_id))
