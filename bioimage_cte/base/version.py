"""The package version, recorded in every ranking JSON, results-store key and report."""

__version__ = "0.2.0"
