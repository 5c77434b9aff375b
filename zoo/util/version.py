"""The zoo's version: one place, read by the package metadata (pyproject.toml) too."""

__version__ = "0.1.0"

__all__ = ["__version__"]
