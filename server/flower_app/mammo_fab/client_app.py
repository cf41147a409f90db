"""ClientApp component of the FAB: the site's installed `client.app`."""

from mammo_fl.client.app import app

__all__ = ["app"]
