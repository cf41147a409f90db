"""Runners of the transfer-curve experiment: none / pooled / local (torch) and federated (Flower)."""
