"""ServerApp component of the FAB: the coordinator's installed `server.app`."""

from server.app import app

__all__ = ["app"]
