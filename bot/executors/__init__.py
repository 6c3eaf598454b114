"""The one table of step kinds. A runbook naming any other kind fails when it loads.

A kind's module (and its parameters model) is imported when a runbook first names it: a cold
`opsbot run` whose runbooks run only ssh steps does not import docker's, http's or local's
(about 13 ms of its CPU).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from importlib import import_module

from bot.executors.base import ExecContext, KindParams, StepKind

_WHERE = {
    "ssh": ("bot.executors.sshstep", "SshStep"),
    "http": ("bot.executors.http", "HttpStep"),
    "local": ("bot.executors.local", "LocalStep"),
    "docker": ("bot.executors.docker", "DockerStep"),
}


class _Kinds(Mapping[str, type[StepKind]]):
    def __init__(self) -> None:
        self._loaded: dict[str, type[StepKind]] = {}

    def __getitem__(self, name: str) -> type[StepKind]:
        kind = self._loaded.get(name)
        if kind is None:
            module, attr = _WHERE[name]  # KeyError: not a kind
            kind = self._loaded[name] = getattr(import_module(module), attr)
        return kind

    def __iter__(self) -> Iterator[str]:
        return iter(_WHERE)

    def __len__(self) -> int:
        return len(_WHERE)


KINDS: Mapping[str, type[StepKind]] = _Kinds()

__all__ = ["KINDS", "ExecContext", "KindParams", "StepKind"]
