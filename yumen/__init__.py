"""Yumen: a privacy-preserving trusted data space for public data, built on compute-to-data."""

__version__ = "0.1.0"
