"""What both SSH clients (asyncssh's pool, bot.executors.ssh; libssh2, bot.executors.libssh2)
send the same way. Importing it imports neither client."""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from bot.models import ExecOutput, Host, SocketReply

HostKey = tuple[str, int, str | None]  # (address, port, user): one connection each
# AES-GCM first: asyncssh's chacha20-poly1305 makes a cipher object per packet, a tenth of the
# event loop's CPU during a 50-host diagnosis (py-spy); AES-GCM runs in OpenSSL (AES-NI).
# The rest of asyncssh's default order follows, for servers without GCM.
CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com",
           "aes256-ctr", "aes192-ctr", "aes128-ctr")
# stderr joins stdout on the host (so lines are never split between them); the system folders
# join PATH (a non-root login's PATH often lacks /usr/sbin, where nginx, ss and supervisorctl live)
PRELUDE = 'exec 2>&1\nPATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"\n'


@dataclass(frozen=True)
class HostCalls:
    """One host's `run`, `run_many` and `unix_request` of a client (what discovery is given)."""

    run: Callable[[str, float], Awaitable[ExecOutput]]
    run_many: Callable[[Sequence[str], float], Awaitable[list[ExecOutput]]]
    unix_request: Callable[[str, bytes, float], Awaitable[SocketReply]]


async def nothing_started(i: int) -> None:
    """A `run_batch` `started` callback for callers that need none."""
    return None


class SshClient(ABC):
    """What a client builds on its own `run`, `run_batch` and `unix_request`: a host's calls
    (`on`) and several commands' outputs in one session (`run_many`)."""

    @abstractmethod
    async def run(self, host: Host, command: str, timeout: float) -> ExecOutput: ...

    @abstractmethod
    async def run_batch(self, host: Host, commands: Sequence[tuple[str, float]],
                        started: Callable[[int], Awaitable[None]],
                        finished: Callable[[int, ExecOutput, float], Awaitable[None]]) -> None: ...

    @abstractmethod
    async def unix_request(self, host: Host, path: str, request: bytes, timeout: float, *,
                           limit: int = 2**20) -> SocketReply: ...

    @staticmethod
    def _key(host: Host) -> HostKey:
        """One connection per (address, port, user)."""
        return (host.address, host.port, host.user)

    def on(self, host: Host) -> HostCalls:
        return HostCalls(functools.partial(self.run, host), functools.partial(self.run_many, host),
                         functools.partial(self.unix_request, host))

    async def run_many(self, host: Host, commands: Sequence[str],
                       timeout: float) -> list[ExecOutput]:
        """The outputs of `commands`, run in one session (`run_batch`), each under `timeout`."""
        outputs: list[ExecOutput] = [ExecOutput(None, "", error="not run")] * len(commands)

        async def finished(i: int, out: ExecOutput, seconds: float) -> None:
            outputs[i] = out

        await self.run_batch(host, [(c, timeout) for c in commands], nothing_started, finished)
        return outputs
