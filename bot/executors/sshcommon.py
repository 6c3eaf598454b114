"""What both SSH clients (asyncssh's pool, bot.executors.ssh; libssh2, bot.executors.libssh2)
send the same way. Importing it imports neither client."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from bot.models import ExecOutput, SocketReply

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
