"""asyncssh's pool of SSH connections: `ssh` steps (bot.executors.sshstep), discovery, unix sockets.

The command runs in the login user's POSIX shell with stderr joined to stdout (`exec 2>&1`) and
the system folders added to its PATH (a non-root login's PATH often lacks /usr/sbin, where nginx,
ss and supervisorctl live).

One pooled connection per host serves every step of every incident; it closes when idle.

Shell sessions are kept too (`OPSBOT_SSH_REUSE_SESSIONS`, on by default): setting up an SSH session
(sshd's fork, the session, a login shell) costs the host more than a short command. A session runs
the prelude, then `exec "$SHELL" -s` (the login shell, reading commands from stdin); each `run`,
`run_many` or `run_batch` writes its commands to an idle one as a batch (bot.executors.batch: each
command in a subshell of its own, but one that is a single program and its arguments, with stdin
from /dev/null, then a marker line with its status; a
fresh random marker per batch, set in the script, so not in `ps`). The batch's first line is an
acknowledgement: a host that does not acknowledge within the first command's timeout "stopped
answering", and its connection is dropped, as when a new session is not confirmed. One batch at a
time per session; at most `MAX_SESSIONS` sessions of the pool at once on a connection (OpenSSH's
MaxSessions is 10 by default: Docker over SSH needs some; a host that refuses one more on a live
connection, a hardened `MaxSessions 2`, gets no more than it had open: runs wait for one),
`MAX_IDLE` of them kept idle. A session goes back to the idle list only after a batch that ended
cleanly: every command told its status and nothing more came; after a timeout, the output cap or a
lost session it is stopped and never reused (a command may still be running in it). An idle session
that ended, or printed anything, is discarded; one found dead before anything was written to it is
replaced (nothing ran). What a command changes in its subshell (`cd`, `export`, `ulimit`, `set -e`,
`exit`, `exec`) ends with it.

Differences from a session per command (the opt-out): a command killed by a signal shows as
exit status 128+n (from `$?`), not as "killed by signal"; `$$` is the kept shell's, the same
from one run to the next; a command ends when its subshell does,
even if a background process it started still holds the session's output open. The limit: such a
background process that prints while the session is idle gets the session discarded, but one that
prints while the next batch runs puts its bytes into that batch's output (a command that leaves
a process behind writing to stdout should redirect it, e.g. `nohup … >/dev/null 2>&1 &`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from bot.executors.batch import Batch
from bot.executors.capture import Capture
from bot.executors.sshcommon import CIPHERS, PRELUDE, HostKey, SshClient
from bot.executors.sshlib import asyncssh
from bot.filecache import PerVersion
from bot.models import ExecOutput, Host, SocketReply

SHELL = PRELUDE + 'exec "${SHELL:-/bin/sh}" -s\n'  # a kept session: the login shell, on stdin
MAX_SESSIONS = 8  # the pool's sessions open at once on one connection (busy or idle)
MAX_IDLE = 4  # idle shell sessions kept per host


class _AtLimit(Exception):
    """The host refused one more session on a live connection (its MaxSessions)."""


class _Shell:
    """A shell session kept open on a pooled connection (`SHELL`), one batch at a time."""

    def __init__(self, process: asyncssh.SSHClientProcess[bytes],
                 conn: asyncssh.SSHClientConnection) -> None:
        self.process = process
        self.conn = conn
        self.watch: asyncio.Task[None] | None = None  # while idle: anything it prints, or its end

    def usable(self, conn: asyncssh.SSHClientConnection | None) -> bool:
        return conn is self.conn and not self.conn.is_closed() and \
            self.process.exit_status is None and self.process.exit_signal is None and \
            not self.process.is_closing() and not self.process.stdout.at_eof()


class _Entry:
    def __init__(self) -> None:
        self.conn: asyncssh.SSHClientConnection | None = None
        self.lock = asyncio.Lock()
        self.in_use = 0
        self.idle_timer: asyncio.TimerHandle | None = None
        self.idle: list[_Shell] = []  # shell sessions waiting for the next batch
        self.open = 0  # shell sessions of the pool open (or opening) on the host: busy or idle
        self.limit = MAX_SESSIONS  # lowered when the host refuses more (its sshd's MaxSessions)
        self.waiters: list[asyncio.Future[None]] = []  # runs waiting for a session slot


def _read_known_hosts(path: str) -> asyncssh.SSHKnownHosts:
    try:
        return asyncssh.read_known_hosts(path)
    except ValueError as exc:  # a line asyncssh cannot read: verify nothing against it
        raise asyncssh.HostKeyNotVerifiable(f"known_hosts file {path}: {exc}") from None


class SshPool(SshClient):
    def __init__(self, known_hosts: Path, *, idle: float = 300.0,
                 connect_timeout: float = 10.0, reuse_sessions: bool = True) -> None:
        self.known_hosts = known_hosts
        self.idle = idle
        self.connect_timeout = connect_timeout
        self.reuse_sessions = reuse_sessions  # False: a new session per run or batch
        self._entries: dict[HostKey, _Entry] = {}
        self.connects = 0  # how many connections were opened (pool reuse is observable)
        self.sessions = 0  # how many sessions (channels: a shell each) were opened
        self.batches = 0  # how many runs or batches were sent to a session (new or kept)
        self.streams = 0  # how many streams to a unix socket on a host were asked for
        # given a path, asyncssh re-reads known_hosts and the client key for every connection:
        # parsing every known_hosts line (a public key each) per connection was a third of a
        # cold 50-host run's CPU (cProfile); the parsed known_hosts still verifies every key
        self._known = PerVersion(_read_known_hosts)
        self._keys = PerVersion(lambda path: asyncssh.load_keypairs([path]))

    async def _connect(self, host: Host) -> asyncssh.SSHClientConnection:
        if not self.known_hosts.is_file():
            raise asyncssh.HostKeyNotVerifiable(
                f"known_hosts file {self.known_hosts} not found (OPSBOT_KNOWN_HOSTS); "
                "refusing to connect without verifying the host key")
        known = self._known.get(str(self.known_hosts))
        keys = self._keys.get(host.key_file) if host.key_file else ()
        self.connects += 1
        return await asyncssh.connect(
            host.address, port=host.port, username=host.user, client_keys=keys,
            known_hosts=known, connect_timeout=self.connect_timeout,
            keepalive_interval=30, keepalive_count_max=3, agent_path=None,
            login_timeout=self.connect_timeout, encryption_algs=CIPHERS)

    async def connection(self, host: Host) -> asyncssh.SSHClientConnection:
        entry = self._entries.setdefault(self._key(host), _Entry())
        async with entry.lock:
            if entry.conn is not None and entry.conn.is_closed():
                entry.conn = None
            if entry.conn is None:
                entry.conn = await self._connect(host)
            return entry.conn

    @contextlib.asynccontextmanager
    async def hold(self, host: Host) -> AsyncIterator[None]:
        """Keep the host's pooled connection from closing as idle while something other
        than `run` uses it (e.g. Docker over SSH, for the whole of a `docker restart`)."""
        entry = self._checkout(host)
        try:
            yield
        finally:
            self._checkin(entry)

    def _checkout(self, host: Host) -> _Entry:
        entry = self._entries.setdefault(self._key(host), _Entry())
        entry.in_use += 1
        if entry.idle_timer:
            entry.idle_timer.cancel()
            entry.idle_timer = None
        return entry

    def _checkin(self, entry: _Entry) -> None:
        entry.in_use -= 1
        if entry.in_use == 0 and entry.conn is not None:
            loop = asyncio.get_running_loop()
            entry.idle_timer = loop.call_later(self.idle, self._close_idle, entry)

    def _close_idle(self, entry: _Entry) -> None:
        if entry.in_use == 0 and entry.conn is not None:
            self._drop_idle(entry)
            entry.conn.close()
            entry.conn = None

    async def _reach(self, host: Host) -> asyncssh.SSHClientConnection | ExecOutput:
        """The host's pooled connection, or why there is none (nothing was run)."""
        try:
            return await self.connection(host)
        except asyncssh.HostKeyNotVerifiable as exc:
            return ExecOutput(None, "", error=(
                f"host key of {host.name} ({host.address}:{host.port}) not verified "
                f"against {self.known_hosts}: {exc.reason}; nothing was run"))
        except asyncssh.PermissionDenied:
            return ExecOutput(None, "", error=(
                f"SSH login to {host.user or '(default user)'}@{host.address}:"
                f"{host.port} was refused (check ansible_user and the key)"))
        except TimeoutError:
            return ExecOutput(None, "", error=(
                f"cannot reach {host.name} at {host.address}:{host.port}: no SSH answer "
                f"within {self.connect_timeout:g}s"))
        except (OSError, asyncssh.Error) as exc:
            reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) \
                or str(exc) or exc.__class__.__name__
            return ExecOutput(None, "", error=(
                f"cannot reach {host.name} at {host.address}:{host.port}: {reason}"))

    def _drop_idle(self, entry: _Entry) -> None:
        while entry.idle:
            self._discard(entry, entry.idle.pop())

    def _discard(self, entry: _Entry, shell: _Shell) -> None:
        """Stop a shell session for good and free its slot."""
        if shell.watch is not None:
            shell.watch.cancel()
        _stop(shell.process)
        self._release_slot(entry)

    def _release_slot(self, entry: _Entry) -> None:
        entry.open -= 1
        self._wake(entry)

    def _wake(self, entry: _Entry) -> None:
        """A slot freed or a session went idle: the first run waiting looks again."""
        while entry.waiters:
            waiter = entry.waiters.pop(0)
            if not waiter.done():
                waiter.set_result(None)
                return

    async def _take(self, entry: _Entry) -> _Shell | None:
        """An idle shell session of the host's connection, or None when a new one may be
        opened (its slot is taken: `open` counts it). Waits while `MAX_SESSIONS` are busy."""
        while True:
            while entry.idle:
                shell = entry.idle.pop()
                if shell.watch is not None:  # let the watcher go before reading the session
                    shell.watch.cancel()
                    try:
                        await asyncio.wait([shell.watch])
                    except asyncio.CancelledError:
                        self._discard(entry, shell)
                        raise
                    if not shell.watch.cancelled():  # it printed or ended while idle
                        self._discard(entry, shell)
                        continue
                    shell.watch = None
                if shell.usable(entry.conn):
                    return shell
                self._discard(entry, shell)  # ended while idle: nothing was written to it
            if entry.open < entry.limit:
                entry.open += 1
                return None
            waiter = asyncio.get_running_loop().create_future()
            entry.waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter in entry.waiters:
                    entry.waiters.remove(waiter)
                elif waiter.done() and not waiter.cancelled():
                    self._wake(entry)  # woken, but gone: the next one looks instead
                raise

    def _give_back(self, entry: _Entry, shell: _Shell, clean: bool) -> None:
        """After a batch: a session that ended cleanly waits for the next one; any other is
        stopped (a timed-out command may still be running in it)."""
        if clean and len(entry.idle) < MAX_IDLE and shell.usable(entry.conn):
            shell.watch = asyncio.get_running_loop().create_task(self._watch(entry, shell))
            entry.idle.append(shell)
            self._wake(entry)
        else:
            self._discard(entry, shell)

    async def _watch(self, entry: _Entry, shell: _Shell) -> None:
        """While idle: a session that prints (a process a command left behind) or ends is
        never given another batch."""
        with contextlib.suppress(asyncssh.Error, OSError):
            await shell.process.stdout.read(1)
        if shell in entry.idle:
            entry.idle.remove(shell)
            shell.watch = None
            self._discard(entry, shell)

    async def _shell(self, host: Host, entry: _Entry, script: str,
                     timeout: float) -> _Shell | ExecOutput:
        """A shell session of the host that took `script`: an idle one, or a new one; or why
        none could be had (nothing ran)."""
        data = script.encode()
        while True:
            shell = await self._take(entry)
            new = shell is None
            if shell is None:
                try:
                    process = await self._open(host, entry, SHELL, timeout, keep=True)
                except _AtLimit:  # keep fewer sessions: take one that went idle, or wait
                    self._release_slot(entry)
                    continue
                except BaseException:  # cancelled: the slot is free again
                    self._release_slot(entry)
                    raise
                if isinstance(process, ExecOutput):
                    self._release_slot(entry)
                    return process
                shell = _Shell(process, process.channel.get_connection())  # type: ignore[arg-type]
            try:
                shell.process.stdin.write(data)
            except (asyncssh.Error, OSError) as exc:  # nothing was written: nothing ran
                self._discard(entry, shell)
                if new:
                    return ExecOutput(None, "", error=f"SSH connection to {host.name} lost: "
                                      f"{getattr(exc, 'reason', exc)}; nothing was run")
                continue
            self.batches += 1
            return shell

    async def _open(self, host: Host, entry: _Entry, command: str, timeout: float, *,
                    keep: bool = False) -> asyncssh.SSHClientProcess[bytes] | ExecOutput:
        """A session running `command` on the host's pooled connection, or why none opened.
        `keep`: its stdin stays open (a kept shell session reads batches from it)."""
        for attempt in (1, 2):
            conn = await self._reach(host)
            if isinstance(conn, ExecOutput):
                return conn
            try:
                # stderr joins stdout on the host, so lines are never split between them
                # bounded: a host that stopped answering on a pooled connection never
                # confirms the session
                async with asyncio.timeout(timeout):  # no task of its own, as wait_for has
                    if keep:
                        process = await conn.create_process(command, encoding=None)
                    else:
                        process = await conn.create_process(PRELUDE + command, encoding=None,
                                                            stdin=asyncssh.DEVNULL)
                self.sessions += 1
                return process
            except TimeoutError:  # this connection is not trusted again
                if entry.conn is conn:
                    entry.conn = None
                conn.abort()
                return ExecOutput(None, "", error=_stopped_answering(host, timeout),
                                  timed_out=True)
            except (asyncssh.ChannelOpenError, BrokenPipeError) as exc:
                # the session never opened: nothing ran. A live connection that already holds
                # other sessions of the pool refuses one more: the host's MaxSessions (hardened
                # configurations set 2-4), not a dead connection: keep fewer sessions on it
                if keep and entry.open > 1 and entry.conn is conn and not conn.is_closed() \
                        and isinstance(exc, asyncssh.ChannelOpenError):
                    entry.limit = max(1, entry.open - 1)
                    raise _AtLimit from None
                # A pooled connection that died while idle: reconnect once.
                entry.conn = None
                if attempt == 2:
                    return ExecOutput(None, "", error=f"SSH connection to {host.name} lost: "
                                      f"{getattr(exc, 'reason', exc)}; nothing was run")
                continue
            except (asyncssh.Error, OSError) as exc:
                # the command may have reached the host: never run it a second time
                entry.conn = None
                return ExecOutput(None, "", error=f"SSH connection to {host.name} lost while "
                                  f"starting the command ({getattr(exc, 'reason', exc)}); "
                                  "it may have run, and was not retried")
        raise AssertionError("unreachable")

    async def run(self, host: Host, command: str, timeout: float) -> ExecOutput:
        if self.reuse_sessions:  # a batch of one on a kept shell session
            return (await self.run_many(host, [command], timeout))[0]
        entry = self._checkout(host)
        try:
            process = await self._open(host, entry, command, timeout)
            if isinstance(process, ExecOutput):
                return process
            self.batches += 1
            return await _collect(process, host, timeout)
        finally:
            self._checkin(entry)

    async def unix_request(self, host: Host, path: str, request: bytes, timeout: float, *,
                           limit: int = 2**20) -> SocketReply:
        """Send `request` to the unix socket at `path` on the host, through the pooled
        connection (a direct-streamlocal channel: OpenSSH's `AllowStreamLocalForwarding`, the
        login user's permissions on the socket), and read the answer until the peer closes;
        no process starts on the host. Stops reading past `limit` bytes (an error)."""
        entry = self._checkout(host)
        try:
            conn = await self._reach(host)
            if isinstance(conn, ExecOutput):
                return SocketReply(b"", conn.error)
            self.streams += 1
            data = bytearray()
            async with asyncio.timeout(timeout):
                reader, writer = await conn.open_unix_connection(path)
                try:
                    writer.write(request)
                    while chunk := await reader.read(65536):
                        data += chunk
                        if len(data) > limit:
                            return SocketReply(bytes(data[:limit]),
                                               f"{path} answered more than {limit} bytes")
                finally:
                    writer.close()
            return SocketReply(bytes(data))
        except TimeoutError:
            return SocketReply(b"", f"{path} did not answer within {timeout:g}s")
        except asyncssh.ChannelOpenError as exc:
            return SocketReply(b"", f"{host.name} refused a stream to {path}: {exc.reason}")
        except (asyncssh.Error, OSError) as exc:
            return SocketReply(b"", f"stream to {path} on {host.name} lost: "
                               f"{getattr(exc, 'reason', None) or exc}")
        finally:
            self._checkin(entry)

    async def run_batch(self, host: Host, commands: Sequence[tuple[str, float]],
                        started: Callable[[int], Awaitable[None]],
                        finished: Callable[[int, ExecOutput, float], Awaitable[None]]) -> None:
        """Several (command, timeout) in one session, one after another, each in a subshell of
        its own with stdin from /dev/null, its output and exit status told apart by a marker
        line no command can know (bot.executors.batch). Each command keeps its own timeout and
        output cap; `started(i)` and `finished(i, output, seconds)` are called as each one
        starts and ends. When a command times out, hits the cap or the session ends early,
        that one is stopped (its session never reused) and the commands after it run one by
        one (`run`). With `reuse_sessions`, the batch goes to a kept shell session (see the
        module's docstring); without, to a session of its own."""
        if not commands:
            return
        entry = self._checkout(host)
        try:
            batch = Batch([c for c, _ in commands], ack=self.reuse_sessions)
            await started(0)
            began = time.monotonic()
            if self.reuse_sessions:
                session: _Shell | asyncssh.SSHClientProcess[bytes] | ExecOutput = \
                    await self._shell(host, entry, batch.script, commands[0][1])
            else:
                session = await self._open(host, entry, batch.script, commands[0][1])
            if isinstance(session, ExecOutput):
                await finished(0, session, time.monotonic() - began)
                if session.timed_out:  # the pooled connection froze: the rest try a new one
                    done = 1
                else:  # no connection: every command is told why, none ran
                    for i in range(1, len(commands)):
                        await started(i)
                        await finished(i, session, 0.0)
                    return
            elif isinstance(session, _Shell):
                ended = "stopped"
                try:
                    done, ended = await _collect_batch(session.process, host, batch, commands,
                                                       started, finished)
                finally:  # also when cancelled: a session is reused only after a clean end
                    if ended == "frozen":  # this connection is not trusted again
                        if entry.conn is session.conn:
                            entry.conn = None
                        session.conn.abort()
                    self._give_back(entry, session, ended == "clean")
            else:
                self.batches += 1
                done, _ = await _collect_batch(session, host, batch, commands, started, finished)
        finally:
            self._checkin(entry)
        for i in range(done, len(commands)):  # after a stop: one by one
            command, timeout = commands[i]
            await started(i)
            t0 = time.monotonic()
            out = await self.run(host, command, timeout)
            await finished(i, out, time.monotonic() - t0)

    async def close(self) -> None:
        for entry in self._entries.values():
            if entry.idle_timer:
                entry.idle_timer.cancel()
            self._drop_idle(entry)
            if entry.conn is not None:
                entry.conn.close()
                await entry.conn.wait_closed()
                entry.conn = None



async def _collect(process: asyncssh.SSHClientProcess[bytes], host: Host,
                   timeout: float) -> ExecOutput:  # noqa: ASYNC109 (the step's own timeout)
    """Stream the command's output into a bounded capture; stop it at the cap or the timeout.
    A connection lost now is never retried: the command was delivered."""
    capture = Capture()
    error, timed_out = None, False
    try:
        async with asyncio.timeout(timeout):
            while chunk := await process.stdout.read(65536):
                if not capture.feed(chunk):
                    break
            if capture.capped:
                _stop(process)
            else:
                await process.wait_closed()
    except TimeoutError:
        _stop(process)
        error, timed_out = f"timed out after {timeout:g}s", True
    except (asyncssh.Error, OSError) as exc:
        error = (f"SSH connection to {host.name} lost while the command ran "
                 f"({getattr(exc, 'reason', exc)}); it was not retried")
    if capture.capped:
        error = f"stopped: printed more than {capture.cap} bytes (the output cap)"
    elif error is None and (signal := process.exit_signal):  # asyncssh's exit_status is -1
        error = f"the command was killed by signal {signal[0]}"
    elif error is None and process.exit_status is None:
        error = (f"SSH connection to {host.name} lost while the command ran (no exit status); "
                 "it was not retried")
    status = None if error else process.exit_status
    return ExecOutput(status, capture.text(), error=error, timed_out=timed_out,
                      digest=capture.digest, total_bytes=capture.total, capped=capture.capped)


async def _collect_batch(process: asyncssh.SSHClientProcess[bytes], host: Host, batch: Batch,
                         commands: Sequence[tuple[str, float]],
                         started: Callable[[int], Awaitable[None]],
                         finished: Callable[[int, ExecOutput, float], Awaitable[None]],
                         ) -> tuple[int, str]:
    """Stream a batch's output into one bounded capture per command, each under its own
    timeout. Returns how many commands were told to `finished` (the rest did not run here) and
    how the session ended: "clean" (a kept shell told every status and nothing more came: it
    may take the next batch), "frozen" (a kept shell never acknowledged the batch within the
    first command's timeout: the host stopped answering), or "stopped"."""
    loop = asyncio.get_running_loop()
    i, capture, t0 = 0, Capture(), time.monotonic()
    deadline = loop.time() + commands[0][1]
    acked, stray = not batch.ack, False

    def told(status: int | None, error: str | None = None, *, ended: bool = False,
             **kw: Any) -> ExecOutput:
        if not ended:  # stopped: what was held back (a marker's possible start) is output
            capture.feed(batch.rest())
        return ExecOutput(status, capture.text(), error=error, digest=capture.digest,
                          total_bytes=capture.total, **kw)

    while i < len(commands):
        try:
            async with asyncio.timeout_at(deadline):
                chunk = await process.stdout.read(65536)
        except TimeoutError:
            _stop(process)
            if not acked:
                await finished(0, told(None, _stopped_answering(host, commands[0][1]),
                                       timed_out=True), time.monotonic() - t0)
                return 1, "frozen"
            await finished(i, told(None, f"timed out after {commands[i][1]:g}s",
                                   timed_out=True), time.monotonic() - t0)
            return i + 1, "stopped"
        except (asyncssh.Error, OSError) as exc:
            await finished(i, told(None, f"SSH connection to {host.name} lost while the command "
                                   f"ran ({getattr(exc, 'reason', exc)}); it was not retried"),
                           time.monotonic() - t0)
            return i + 1, "stopped"
        pieces = batch.feed(chunk) if chunk else [batch.rest()]
        for piece in pieces:
            if i == len(commands):  # after the last status: printed by something left behind
                stray = True
                continue
            if isinstance(piece, bytes):
                if not capture.feed(piece):
                    _stop(process)
                    await finished(i, told(None, f"stopped: printed more than {capture.cap} "
                                           "bytes (the output cap)", capped=True),
                                   time.monotonic() - t0)
                    return i + 1, "stopped"
                continue
            if not acked:  # the shell took the batch: the first command's time starts now
                acked, t0 = True, time.monotonic()
                deadline = loop.time() + commands[0][1]
                continue
            await finished(i, told(piece, None if piece is not None else
                                   "the command's exit status could not be read", ended=True),
                           time.monotonic() - t0)
            stray = stray or piece is None
            i += 1
            if i < len(commands):
                capture, t0 = Capture(), time.monotonic()
                deadline = loop.time() + commands[i][1]
                await started(i)
        if not chunk:  # the session ended before this command did
            with contextlib.suppress(TimeoutError, asyncssh.Error, OSError):
                await asyncio.wait_for(process.wait_closed(), 2)
            signal = process.exit_signal
            await finished(i, told(None, f"the command was killed by signal {signal[0]}" if signal
                                   else f"SSH connection to {host.name} lost while the command "
                                   "ran (no exit status); it was not retried"),
                           time.monotonic() - t0)
            return i + 1, "stopped"
    if batch.ack:  # a kept shell: anything after the last status makes it unfit for reuse
        return len(commands), "stopped" if stray or batch.rest() else "clean"
    with contextlib.suppress(TimeoutError, asyncssh.Error, OSError):
        await asyncio.wait_for(process.wait_closed(), 2)  # every command told: let it end
    if process.exit_status is None:
        _stop(process)  # something it started still holds the session open
    return len(commands), "stopped"


def _stopped_answering(host: Host, timeout: float) -> str:
    """A session not confirmed, or a kept one that did not acknowledge its batch, in time."""
    return (f"timed out after {timeout:g}s: {host.name} stopped answering on its SSH "
            "connection; the command may have reached it, and was not retried")


def _stop(process: asyncssh.SSHClientProcess[bytes]) -> None:
    with contextlib.suppress(asyncssh.Error, OSError):
        process.send_signal("KILL")  # honoured by OpenSSH >= 7.9; closing the channel anyway
    process.close()
