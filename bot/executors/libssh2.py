"""`ssh` steps of a one-shot command over libssh2 (ssh2-python: the SSH protocol in C).

The default client of one-shot commands (`OPSBOT_SSH_CLIENT`; `asyncssh` selects the pool): a
cold `opsbot run` on many hosts spent much of its CPU on asyncssh (its import, and its handshakes
and packets in Python); libssh2 does that work in C.
It runs the `ssh` steps and discovery's reads (commands and unix sockets) of one-shot commands;
the server and Docker over SSH keep asyncssh's pool (bot.executors.ssh).

As there: the host key is verified against the configured known_hosts (bot.executors.knownhosts:
unknown, changed or revoked = refused, nothing run); the inventory's user, port and key; the
connect timeout bounds the TCP connection, the handshake and the login; each command has its
own timeout and the output cap (stopped with SIGKILL, then its channel closed); stderr joins
stdout on the host (`exec 2>&1`). Every command runs in a session (channel) of its own on one
connection per host, with its stdin closed; its text is sent as the session's command, never
pasted into another. libssh2 runs non-blocking, its socket watched by the event loop's selector,
so no call waits on the network.

A wait on the socket is right only when libssh2 holds nothing the waiter wants: any libssh2 call
that reads takes every packet that came, for any stream, into its own buffer, and the socket is
then quiet. So a session is read with one call (stderr merged into it: a second call for stderr
would take in stdout's packets and the session's end, then wait for bytes that already came), a
call that said EAGAIN is made again before any other on the connection, and one session at a
time runs per host.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from ssh2.error_codes import LIBSSH2_ERROR_EAGAIN
from ssh2.exceptions import SSH2Error
from ssh2.session import (
    LIBSSH2_METHOD_CRYPT_CS,
    LIBSSH2_METHOD_CRYPT_SC,
    LIBSSH2_METHOD_HOSTKEY,
    LIBSSH2_SESSION_BLOCK_INBOUND,
    LIBSSH2_SESSION_BLOCK_OUTBOUND,
    Session,
)

from bot.executors.batch import Batch
from bot.executors.capture import Capture
from bot.executors.knownhosts import KnownHosts, KnownHostsUnreadable
from bot.executors.sshcommon import CIPHERS, PRELUDE, HostKey, SshClient, nothing_started
from bot.filecache import PerVersion
from bot.models import ExecOutput, Host, SocketReply

# the host key algorithms of each known_hosts key type (RSA keys sign with SHA-2 first)
HOSTKEY_ALGS = {"ssh-rsa": ("rsa-sha2-512", "rsa-sha2-256", "ssh-rsa")}
CLOSE_WAIT = 2.0  # seconds to let a stopped or finished session close before giving up on it
# without a key file in the inventory, the user's own keys, as asyncssh loads them by default
# (those libssh2 reads: no security-key, Ed448 or DSA keys)
DEFAULT_IDENTITIES = ("id_ed25519", "id_ecdsa", "id_rsa")
EXTENDED_DATA_MERGE = 2  # libssh2.h LIBSSH2_CHANNEL_EXTENDED_DATA_MERGE (ssh2-python lacks it)


class _Refused(Exception):
    """Why a host cannot be reached; nothing was run (the message is the step's error)."""


class _Conn:
    """One host's connection: a socket and a non-blocking libssh2 session on it."""

    def __init__(self, sock: socket.socket, session: Session) -> None:
        self.sock, self.session = sock, session
        self.broken = False  # a command's session could not be closed: not used again

    async def call(self, fn: Callable[..., Any], *args: Any, deadline: float) -> Any:
        """`fn(*args)` again each time the socket is ready, until it does not say EAGAIN."""
        while True:
            result = fn(*args)
            rc = result[0] if isinstance(result, tuple) else result
            if not (isinstance(rc, int) and rc == LIBSSH2_ERROR_EAGAIN):
                return result
            await self.ready(deadline)

    async def ready(self, deadline: float) -> None:
        """Wait (until `deadline`, loop time) for the socket in the direction the last call
        that said EAGAIN waits on: libssh2 then holds nothing more for it (the module's
        docstring). One waiter at a time: the host's lock is held."""
        loop = asyncio.get_running_loop()
        ways = self.session.block_directions()
        woken: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            if not woken.done():
                woken.set_result(None)

        fd = self.sock.fileno()
        if ways & LIBSSH2_SESSION_BLOCK_INBOUND or not ways:
            loop.add_reader(fd, wake)
        if ways & LIBSSH2_SESSION_BLOCK_OUTBOUND:
            loop.add_writer(fd, wake)
        try:
            async with asyncio.timeout_at(deadline):
                await woken
        finally:
            loop.remove_reader(fd)
            loop.remove_writer(fd)

    def close(self) -> None:
        self.sock.close()


class Libssh2Client(SshClient):
    """`run` and `run_batch` of `ssh` steps, as bot.executors.ssh.SshPool has them."""

    def __init__(self, known_hosts: Path, *, connect_timeout: float = 10.0) -> None:
        self.known_hosts = known_hosts
        self.connect_timeout = connect_timeout
        self._known = PerVersion(lambda path: KnownHosts.read(Path(path)))
        self._conns: dict[HostKey, _Conn] = {}
        self._locks: dict[HostKey, asyncio.Lock] = {}
        self.connects = 0
        self.sessions = 0
        self.streams = 0  # streams to a unix socket on a host asked for

    async def unix_request(self, host: Host, path: str, request: bytes, timeout: float, *,
                           limit: int = 2**20) -> SocketReply:
        """Send `request` to the unix socket at `path` on the host (a direct-streamlocal
        channel: OpenSSH's `AllowStreamLocalForwarding`, the login user's permissions on the
        socket) and read the answer until the peer closes, as SshPool.unix_request does."""
        async with self._locks.setdefault(self._key(host), asyncio.Lock()):
            conn = await self._reach(host)
            if isinstance(conn, ExecOutput):
                return SocketReply(b"", conn.error)
            deadline = asyncio.get_running_loop().time() + timeout
            self.streams += 1  # asked for, as SshPool counts them
            try:
                channel = await conn.call(conn.session.direct_streamlocal_ex, path, "127.0.0.1",
                                          0, deadline=deadline)
                channel.handle_extended_data2(EXTENDED_DATA_MERGE)
            except TimeoutError:
                conn.broken = True
                return SocketReply(b"", f"{path} did not answer within {timeout:g}s")
            except SSH2Error as exc:
                why = conn.session.last_error() or exc.__class__.__name__
                return SocketReply(b"", f"{host.name} refused a stream to {path}: {why}")
            data = bytearray()
            try:
                rest = request
                while rest:
                    rc, written = channel.write(rest)
                    rest = rest[written:]
                    if rc == LIBSSH2_ERROR_EAGAIN and rest:
                        await conn.ready(deadline)
                while (chunk := _read(channel)) != b"":
                    if chunk is None:
                        await conn.ready(deadline)
                        continue
                    data += chunk
                    if len(data) > limit:
                        return SocketReply(bytes(data[:limit]),
                                           f"{path} answered more than {limit} bytes")
                return SocketReply(bytes(data))
            except TimeoutError:
                return SocketReply(b"", f"{path} did not answer within {timeout:g}s")
            except SSH2Error as exc:
                conn.broken = True
                return SocketReply(b"", f"stream to {path} on {host.name} lost: "
                                   f"{exc.__class__.__name__}")
            except asyncio.CancelledError:  # a libssh2 call may be left half done
                conn.broken = True
                raise
            finally:
                if not conn.broken:
                    await self._stop(conn, channel, kill=False, wait=0.0)

    async def run(self, host: Host, command: str, timeout: float) -> ExecOutput:
        outputs: list[ExecOutput] = []

        async def finished(i: int, out: ExecOutput, seconds: float) -> None:
            outputs.append(out)

        await self.run_batch(host, [(command, timeout)], nothing_started, finished)
        return outputs[0]

    async def run_batch(self, host: Host, commands: Sequence[tuple[str, float]],
                        started: Callable[[int], Awaitable[None]],
                        finished: Callable[[int, ExecOutput, float], Awaitable[None]]) -> None:
        """Several (command, timeout) in one session, as SshPool.run_batch without kept
        sessions: each as bot.executors.batch runs it, its output and exit status told apart by a
        marker line (bot.executors.batch), each under its own timeout and the output cap.
        When one is stopped or the session ends early, the rest run one by one."""
        if not commands:
            return
        await started(0)
        t0 = time.monotonic()
        # one session at a time per connection: libssh2 wants a call that said EAGAIN made
        # again before any other on the connection, so sessions are never interleaved
        async with self._locks.setdefault(self._key(host), asyncio.Lock()):
            conn = await self._reach(host)
            if isinstance(conn, ExecOutput):  # no connection: every command is told why
                await finished(0, conn, time.monotonic() - t0)
                for i in range(1, len(commands)):
                    await started(i)
                    await finished(i, conn, 0.0)
                return
            try:
                done = await self._batch(conn, host, commands, started, finished)
            except asyncio.CancelledError:  # a libssh2 call may be left half done
                conn.broken = True
                raise
        for i in range(done, len(commands)):
            await started(i)
            t0 = time.monotonic()
            out = await self.run(host, *commands[i])
            await finished(i, out, time.monotonic() - t0)

    async def close(self) -> None:
        for conn in self._conns.values():
            with contextlib.suppress(SSH2Error, OSError, TimeoutError):
                deadline = asyncio.get_running_loop().time() + CLOSE_WAIT
                await conn.call(conn.session.disconnect, deadline=deadline)
            conn.close()
        self._conns.clear()

    # -- connecting -------------------------------------------------------------------------
    async def _reach(self, host: Host) -> _Conn | ExecOutput:
        """The host's connection, or why there is none (the host's lock is held)."""
        key = self._key(host)
        conn = self._conns.get(key)
        if conn is not None and not conn.broken:
            return conn
        if conn is not None:
            conn.close()
        try:
            conn = await self._connect(host)
        except _Refused as exc:
            return ExecOutput(None, "", error=str(exc))
        self._conns[key] = conn
        return conn

    async def _connect(self, host: Host) -> _Conn:
        if not self.known_hosts.is_file():
            raise _Refused(self._unverified(host, f"known_hosts file {self.known_hosts} not "
                                            "found (OPSBOT_KNOWN_HOSTS)"))
        try:
            known = self._known.get(str(self.known_hosts))
        except (KnownHostsUnreadable, OSError) as exc:
            raise _Refused(self._unverified(host, str(exc))) from None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.connect_timeout
        where = f"{host.name} at {host.address}:{host.port}"
        sock: socket.socket | None = None
        try:
            async with asyncio.timeout_at(deadline):
                family, address = await _address(host)
                sock = socket.socket(family, socket.SOCK_STREAM)
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                await loop.sock_connect(sock, address)
            self.connects += 1
            trusted = known.trusted(host.address, host.port, sock.getpeername()[0])
            if not trusted.keys:
                raise _Refused(self._unverified(host, "no key of this host is known"))
            session = Session()
            session.set_blocking(False)
            conn = _Conn(sock, session)
            session.method_pref(LIBSSH2_METHOD_HOSTKEY, ",".join(
                a for t in trusted.algorithms for a in HOSTKEY_ALGS.get(t, (t,))))
            for way in (LIBSSH2_METHOD_CRYPT_CS, LIBSSH2_METHOD_CRYPT_SC):
                session.method_pref(way, ",".join(CIPHERS))
            await conn.call(session.handshake, sock, deadline=deadline)
            blob, _ = session.hostkey()
            if not trusted.allows(blob):
                raise _Refused(self._unverified(host, "the host's key is not the known one "
                                                "(changed, revoked or unknown)"))
            user = host.user or getpass.getuser()
            for key_file in _identities(host):
                with contextlib.suppress(*_AUTH_ERRORS):  # refused: the next one, if any
                    await conn.call(session.userauth_publickey_fromfile, user, key_file,
                                    deadline=deadline)
                if session.userauth_authenticated():
                    break
            if not session.userauth_authenticated():
                raise SSH2Error("not authenticated")
            return conn
        except (_Refused, asyncio.CancelledError):
            if sock is not None:
                sock.close()
            raise
        except TimeoutError:
            if sock is not None:
                sock.close()
            raise _Refused(f"cannot reach {where}: no SSH answer within "
                           f"{self.connect_timeout:g}s") from None
        except OSError as exc:
            if sock is not None:
                sock.close()
            raise _Refused(f"cannot reach {where}: {exc.strerror or exc}") from None
        except SSH2Error as exc:
            sock.close() if sock is not None else None
            if isinstance(exc, _AUTH_ERRORS) or str(exc) == "not authenticated":
                raise _Refused(f"SSH login to {host.user or '(default user)'}@{host.address}:"
                               f"{host.port} was refused (check ansible_user and the key)"
                               ) from None
            raise _Refused(f"cannot reach {where}: SSH failed "
                           f"({exc.__class__.__name__}{': ' + str(exc) if str(exc) else ''})"
                           ) from None

    def _unverified(self, host: Host, why: str) -> str:
        return (f"host key of {host.name} ({host.address}:{host.port}) not verified against "
                f"{self.known_hosts}: {why}; nothing was run")

    # -- a batch of commands in one session --------------------------------------------------
    async def _batch(self, conn: _Conn, host: Host, commands: Sequence[tuple[str, float]],
                     started: Callable[[int], Awaitable[None]],
                     finished: Callable[[int, ExecOutput, float], Awaitable[None]]) -> int:
        """Run `commands` in one session; how many were told to `finished`."""
        loop = asyncio.get_running_loop()
        batch = Batch([c for c, _ in commands])
        i, capture, t0 = 0, Capture(), time.monotonic()
        deadline = loop.time() + commands[0][1]

        def told(status: int | None, error: str | None = None, *, ended: bool = False,
                 **kw: Any) -> ExecOutput:
            if not ended:  # stopped: what was held back (a marker's possible start) is output
                capture.feed(batch.rest())
            return ExecOutput(status, capture.text(), error=error, digest=capture.digest,
                              total_bytes=capture.total, **kw)

        try:
            channel = await conn.call(conn.session.open_session, deadline=deadline)
        except (TimeoutError, SSH2Error) as exc:  # the session never opened: nothing ran
            conn.broken = True
            why = f"no session within {commands[0][1]:g}s" if isinstance(exc, TimeoutError) \
                else exc.__class__.__name__
            await finished(0, told(None, f"SSH connection to {host.name} lost: {why}; nothing "
                                   "was run", timed_out=isinstance(exc, TimeoutError)),
                           time.monotonic() - t0)
            return 1
        self.sessions += 1
        channel.handle_extended_data2(EXTENDED_DATA_MERGE)  # stderr: read with stdout
        try:
            await conn.call(channel.execute, PRELUDE + batch.script, deadline=deadline)
            await conn.call(channel.send_eof, deadline=deadline)  # stdin: nothing
            while i < len(commands):
                chunk = _read(channel)
                if chunk is None:
                    await conn.ready(deadline)
                    continue
                pieces = batch.feed(chunk) if chunk else [batch.rest()]
                for piece in pieces:
                    if i == len(commands):  # after the last status: something left behind
                        continue
                    if isinstance(piece, bytes):
                        if not capture.feed(piece):
                            await self._stop(conn, channel)
                            await finished(i, told(None, f"stopped: printed more than "
                                                   f"{capture.cap} bytes (the output cap)",
                                                   capped=True), time.monotonic() - t0)
                            return i + 1
                        continue
                    await finished(i, told(piece, None if piece is not None else
                                           "the command's exit status could not be read",
                                           ended=True), time.monotonic() - t0)
                    i += 1
                    if i < len(commands):
                        capture, t0 = Capture(), time.monotonic()
                        deadline = loop.time() + commands[i][1]
                        await started(i)
                if not chunk:  # the session ended before this command did
                    await self._stop(conn, channel, kill=False)
                    await finished(i, told(None, f"the session on {host.name} ended before the "
                                           "command told its exit status (killed by a signal, "
                                           "or the connection lost); it was not retried"),
                                   time.monotonic() - t0)
                    return i + 1
        except TimeoutError:
            await self._stop(conn, channel)
            await finished(i, told(None, f"timed out after {commands[i][1]:g}s",
                                   timed_out=True), time.monotonic() - t0)
            return i + 1
        except SSH2Error as exc:
            conn.broken = True
            await finished(i, told(None, f"SSH connection to {host.name} lost while the command "
                                   f"ran ({exc.__class__.__name__}); it was not retried"),
                           time.monotonic() - t0)
            return i + 1
        await self._stop(conn, channel, kill=False)  # every command told: let the session end
        return len(commands)

    async def _stop(self, conn: _Conn, channel: Any, *, kill: bool = True,
                    wait: float = CLOSE_WAIT) -> None:
        """End a session. `kill`: SIGKILL to what still runs in it (honoured by OpenSSH >= 7.9);
        else it is given `CLOSE_WAIT` to end (something a command started may hold it open:
        then killed). A session that does not close in time takes its connection with it."""
        loop = asyncio.get_running_loop()
        try:
            if not kill:
                try:
                    await _drain(conn, channel, loop.time() + wait)
                except TimeoutError:
                    kill = wait > 0  # a session left running; a stream is just closed
            end = loop.time() + CLOSE_WAIT
            if kill:
                with contextlib.suppress(SSH2Error):  # made again until sent, as every call
                    await conn.call(channel.signal, "KILL", deadline=end)
            await conn.call(channel.close, deadline=end)
            await _drain(conn, channel, end)  # wait_closed wants the host's end of output first
            await conn.call(channel.wait_closed, deadline=end)
        except (TimeoutError, SSH2Error):
            conn.broken = True


async def _drain(conn: _Conn, channel: Any, deadline: float) -> None:
    """Read (and drop) what a session prints until its end."""
    while (chunk := _read(channel)) != b"":
        if chunk is None:
            await conn.ready(deadline)


async def _address(host: Host) -> tuple[int, Any]:
    """The host's socket family and address: an IP address as it is (no resolver thread),
    else the resolver's first answer."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host.address)
        except OSError:
            continue
        return family, (host.address, host.port)
    infos = await asyncio.get_running_loop().getaddrinfo(host.address, host.port,
                                                         type=socket.SOCK_STREAM)
    return infos[0][0], infos[0][4]



def _identities(host: Host) -> tuple[str, ...]:
    """The key files to log in with: the inventory's, else the user's own (~/.ssh)."""
    if host.key_file:
        return (host.key_file,)
    own = (Path.home() / ".ssh" / name for name in DEFAULT_IDENTITIES)
    return tuple(str(path) for path in own if path.is_file())


def _read(channel: Any) -> bytes | None:
    """What the session printed (stdout, and stderr merged into it: empty, joined to stdout on
    the host); b"" at its end; None when nothing is there yet. One libssh2 read: it returns
    what it holds for the session before its end, and says EAGAIN only when it holds nothing
    and the socket had nothing more."""
    size, data = channel.read(65536)
    if size > 0:
        return bytes(data)
    if size == 0:
        return b""
    if size == LIBSSH2_ERROR_EAGAIN:
        return None
    raise SSH2Error(f"read failed ({size})")


def _auth_errors() -> tuple[type[Exception], ...]:
    from ssh2 import exceptions

    names = ("AuthenticationError", "PublickeyUnverifiedError", "FileError",
             "KeyfileAuthFailedError")
    return tuple(getattr(exceptions, n) for n in names if hasattr(exceptions, n))


_AUTH_ERRORS = _auth_errors()
