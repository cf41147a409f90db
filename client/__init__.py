"""A hospital site: Flower ClientApp, site data, audit log and mammo-client."""
