"""Jinja2 templates of the coordinator page and the run report, and the page's script (package data)."""
