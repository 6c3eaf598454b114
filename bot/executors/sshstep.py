"""`ssh`: a shell command on the host over SSH, host key always verified.

Run by asyncssh's pool (bot.executors.ssh), or for a one-shot command by libssh2
(bot.executors.libssh2, `OPSBOT_SSH_CLIENT`): this module imports neither, so a step kind
loads without the client it does not use.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from pydantic import Field

from bot.executors.base import KindParams, StepKind
from bot.models import ExecOutput, Host


class SshParams(KindParams):
    command: str = Field(min_length=1)


class SshStep(StepKind):
    name = "ssh"
    Params = SshParams
    shell_fields = frozenset({"command"})
    batches = True

    @classmethod
    def display(cls, action: Mapping[str, Any]) -> str:
        return str(action["command"])

    async def run(self, action: Mapping[str, Any], host: Host, timeout: float) -> ExecOutput:
        return await self.ctx.ssh_commands.run(host, action["command"], timeout)

    async def run_batch(self, actions: Sequence[tuple[Mapping[str, Any], float]], host: Host,
                        started: Callable[[int], Awaitable[None]],
                        finished: Callable[[int, ExecOutput, float], Awaitable[None]]) -> None:
        await self.ctx.ssh_commands.run_batch(host, [(a["command"], t) for a, t in actions],
                                              started, finished)
