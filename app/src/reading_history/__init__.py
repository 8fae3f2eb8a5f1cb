"""The reading-history service: what a user read, exported on request, kept private."""

__version__ = "1.0.0"
