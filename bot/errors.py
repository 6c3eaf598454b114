"""One small hierarchy. Every message is one line a user can act on.

A step that fails on its target (unreachable, host key refused, timeout, engine down) is not an
exception: executors return it as a result whose `error` says what happened.
"""

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


class NotFound(BotError):
    """An incident, runbook or approval that was asked for does not exist."""


class TemplateFailed(BotError):
    """A runbook template or `when` condition failed to render (an undefined name, a sandbox
    refusal, bad syntax): Jinja's own error, with its message."""


class StoreError(BotError):
    """The database cannot be opened or written (the store's own errors, translated)."""
