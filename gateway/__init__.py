"""Compliance-aware SMTP sending gateway."""

__version__ = "0.1.0"
