"""Discovery: host + failing URL -> the chain behind it (nginx server and location, upstream,
who listens or should, the program, unit or container that runs it, its logs and needs)."""

from __future__ import annotations

from bot.discovery.chain import Chain, Owner
from bot.discovery.probe import Run, discover

__all__ = ["Chain", "Owner", "Run", "discover"]
