"""Shared by the coordinator and the hospitals: data, models, training, metrics."""
