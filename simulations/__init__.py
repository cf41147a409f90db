"""Researcher tools: virtual sites and transfer-curve experiments (mammo-sim)."""
