"""The package version: one place, read by ddpm/__init__.py, config.json and pyproject.toml."""

__version__ = "0.1.0"
