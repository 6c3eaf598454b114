"""What every step kind provides: a typed parameters model, rendering, and running."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

from bot import pydanticlib, templates  # noqa: F401 (pydanticlib: pydantic without its plugin search)
from bot.models import ExecOutput, Host

if TYPE_CHECKING:
    from bot.executors.libssh2 import Libssh2Client
    from bot.executors.ssh import SshPool


class KindParams(BaseModel):
    """Base of each kind's parameters: unknown fields are errors at load time."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass
class ExecContext:
    """What executors share in one process: settings they need and pooled connections."""

    known_hosts: Path
    ssh_idle: float = 300.0
    connect_timeout: float = 10.0
    ssh_reuse_sessions: bool = True
    ssh_client: str = "asyncssh"  # libssh2: ssh steps over bot.executors.libssh2
    _ssh: SshPool | None = field(default=None, repr=False)
    _libssh2: Libssh2Client | None = field(default=None, repr=False)
    _closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list, repr=False)

    @property
    def ssh(self) -> SshPool:
        if self._ssh is None:
            from bot.executors.ssh import SshPool

            self._ssh = SshPool(self.known_hosts, idle=self.ssh_idle,
                                connect_timeout=self.connect_timeout,
                                reuse_sessions=self.ssh_reuse_sessions)
        return self._ssh

    @property
    def ssh_commands(self) -> SshPool | Libssh2Client:
        """Who runs commands on hosts (`ssh` steps, discovery's reads and unix sockets): the
        asyncssh pool, or libssh2 (`ssh_client`). Docker over SSH always uses the pool."""
        if self.ssh_client != "libssh2":
            return self.ssh
        if self._libssh2 is None:
            from bot.executors.libssh2 import Libssh2Client

            self._libssh2 = Libssh2Client(self.known_hosts,
                                          connect_timeout=self.connect_timeout)
        return self._libssh2

    def on_close(self, closer: Callable[[], Awaitable[None]]) -> None:
        """Call `closer` (idempotent) on every close, before the SSH pool closes: e.g. the
        Docker clients whose engines are reached through SSH connections of the pool."""
        self._closers.append(closer)

    async def close(self) -> None:
        for closer in reversed(self._closers):
            await closer()
        if self._libssh2 is not None:
            await self._libssh2.close()
        if self._ssh is not None:
            await self._ssh.close()


class StepKind(ABC):
    """A step kind: `Params` validated when the runbook loads; `run` when the step runs."""

    name: ClassVar[str]
    Params: ClassVar[type[KindParams]]
    shell_fields: ClassVar[frozenset[str]] = frozenset()  # rendered with shell quoting
    batches: ClassVar[bool] = False  # run_batch runs several actions at once on a host
    # modules its first run imports (a cold `opsbot run` without such steps never loads them);
    # a server imports them at start-up, off its loop (bot.server)
    first_use_imports: ClassVar[tuple[str, ...]] = ()

    def __init__(self, ctx: ExecContext) -> None:
        self.ctx = ctx

    @classmethod
    def templates_of(cls, params: KindParams) -> list[tuple[str, str, bool]]:
        """(field, template text, shell?) for every template string in the parameters."""
        out: list[tuple[str, str, bool]] = []
        for name, value in params:
            shell = name in cls.shell_fields
            if isinstance(value, str):
                out.append((name, value, shell))
            elif isinstance(value, list | tuple):
                out.extend((f"{name}[{i}]", v, shell) for i, v in enumerate(value)
                           if isinstance(v, str))
        return out

    @classmethod
    def render(cls, params: KindParams, context: Mapping[str, Any]) -> dict[str, Any]:
        """The action with every template filled in."""
        action: dict[str, Any] = {}
        for name, value in params:
            shell = name in cls.shell_fields
            if isinstance(value, str):
                action[name] = templates.render(value, context, shell=shell)
            elif isinstance(value, list | tuple):
                action[name] = [templates.render(v, context, shell=shell)
                                if isinstance(v, str) else v for v in value]
            else:
                action[name] = value
        return action

    @classmethod
    def display(cls, action: Mapping[str, Any]) -> str:
        """How the rendered action reads in the thread and the audit log."""
        return f"{cls.name} " + json.dumps(dict(action), sort_keys=True)

    @abstractmethod
    async def run(self, action: Mapping[str, Any], host: Host, timeout: float) -> ExecOutput:
        """Run the rendered action on `host`. Never raises for a failure of the target:
        return an ExecOutput whose `error` says what went wrong."""

    async def run_batch(self, actions: Sequence[tuple[Mapping[str, Any], float]], host: Host,
                        started: Callable[[int], Awaitable[None]],
                        finished: Callable[[int, ExecOutput, float], Awaitable[None]]) -> None:
        """(action, timeout) pairs one after another, at the cost of one: `started(i)` and
        `finished(i, output, seconds)` as each starts and ends. Kinds with `batches` only."""
        raise NotImplementedError(f"{self.name} steps do not run in batches")
