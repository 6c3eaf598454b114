"""One small hierarchy. Every message is one line a user can act on."""

from __future__ import annotations


class BotError(Exception):
    """Base of every error opsbot reports to a user (never with a traceback)."""


class ConfigError(BotError):
    """A setting is missing or malformed."""


class InventoryError(BotError):
    """The inventory file is unreadable, or a target names no host or group."""


class RunbookInvalid(BotError):
    """A runbook file fails validation; the message starts with file:line."""


class ParamInvalid(BotError):
    """A runbook parameter (from an alert label, chat or the terminal) fails validation."""


class IngestError(BotError):
    """A webhook payload is malformed or has the wrong shape."""


class StepFailed(BotError):
    """A step could not run (connection refused, host key mismatch, engine down, ...)."""


class StepTimeout(StepFailed):
    """A step ran past its timeout; any partial output is kept."""


class HostKeyError(StepFailed):
    """The host's key is unknown or differs from OPSBOT_KNOWN_HOSTS: nothing was run."""


class ApprovalDenied(BotError):
    """An approval was rejected, expired, voided, or asked for by someone not allowed."""


class NotFound(BotError):
    """An incident, runbook or approval that was asked for does not exist."""
