"""opsbot: a ChatOps incident-response bot."""

__version__ = "0.1.0"
