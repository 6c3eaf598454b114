"""The one table of step kinds. A runbook naming any other kind fails when it loads."""

from __future__ import annotations

from bot.executors.base import ExecContext, KindParams, StepKind
from bot.executors.docker import DockerStep
from bot.executors.http import HttpStep
from bot.executors.local import LocalStep
from bot.executors.ssh import SshStep

KINDS: dict[str, type[StepKind]] = {
    "ssh": SshStep,
    "http": HttpStep,
    "local": LocalStep,
    "docker": DockerStep,
}

__all__ = ["KINDS", "ExecContext", "KindParams", "StepKind"]
