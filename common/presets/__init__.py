"""Bundled TOML presets (data only; loaded by path from common.utils.config)."""
