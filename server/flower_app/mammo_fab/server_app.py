"""ServerApp component of the FAB: the coordinator's installed `server.app`."""

from mammo_fl.server.app import app

__all__ = ["app"]
