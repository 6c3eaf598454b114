"""The edge process (OPSBOT_EDGE=process): the answers to Slack and Alertmanager in a process
with an interpreter lock of its own, so that an answer never waits for the bot's loop thread
(a 50-host diagnosis) to get a core back.

`opsbot serve` (the core) binds OPSBOT_LISTEN and starts `python -m bot.edgeproc` with the
listening socket and one end of a socket pair. The edge imports little (aiohttp, the store,
the signature check; not asyncssh, the Docker SDK, the diagnosis or the runbooks) and answers
by itself what needs only the request and the store:

- Alertmanager webhooks: recorded through the intake's group commit (a webhook and its work
  row), then handed to the core;
- Slack: the signature, the replay check, `url_verification`, `ssl_check`, `help`, and
  clicks on the approval buttons (their work row, with the replay key, in one transaction),
  handed to the core.

Everything else (the other slash commands, `/healthz`, `/metrics`) is forwarded to the core's
own HTTP server on a Unix socket, which answers as in thread mode. Hand-over: the edge writes
each new work id (and an alert's parsed group) on the pair; the core's loop takes it up as
`Tasks.spawn` does for the thread's answers. When the core is away (killed, restarting) the
edge keeps answering: webhooks and clicks are recorded as usual, a slash command is recorded
as work that the next core does and answers through its response_url, and all of it waits
in the store for the next start's resume (`Opsbot.resume`), owned by the core that is gone.

The core restarts an edge that dies (the listening socket stays open in the core meanwhile:
connections wait in its backlog). The edge watches the core with a pidfd: once the core is
gone, it answers for ORPHAN_GRACE more seconds and lets a new `opsbot serve` take its
listening socket over (a Unix socket beside it, CONTROL), then ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import signal
import socket
import struct
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import (
    ClientConnectorError,
    ClientError,
    ClientSession,
    ClientTimeout,
    UnixConnector,
    web,
)

from bot import edge
from bot.config import Settings
from bot.edge import (
    BODY_TIMEOUT,
    HEADER_TIMEOUT,
    MAX_BODY,
    BodyRefused,
    alertmanager_handler,
    error,
    one_line_errors,
    read_body,
    store_ok,
)

if TYPE_CHECKING:
    from bot.adapters.store import AsyncStore, WebhookIntake

log = logging.getLogger("opsbot.edge")
FRAME = struct.Struct("!I")  # each message on the pair: its length, then a pickle
ORPHAN_GRACE = 300.0  # seconds an edge whose core is gone answers, for a new core to take over
RESTART_PAUSE = 1.0  # seconds before an edge that died is started again
CORE_TIMEOUT = 30.0  # seconds for the core to answer a forwarded request
HOP_BY_HOP = {"host", "content-length", "transfer-encoding", "connection", "keep-alive"}
KEPT_HEADERS = ("Content-Type", "Allow", "X-Content-Type-Options")
COMMAND = [sys.executable, "-m", "bot.edgeproc"]  # then the pair's and the listener's fds
# steps of nice the edge runs ahead of the core's loop: its own interpreter lock is not enough
# when the cores are busy (the ack bench: the edge's loop waited for a core as the HTTP thread
# had); nice orders the threads of one scheduling group, so a core goes to an answer first
EDGE_LEAD = 5


@dataclass(frozen=True)
class Hello:
    """What the core tells a new edge."""

    settings: Settings
    owner: int  # the core's store owner: the edge's work rows are the core's
    core_pid: int
    core_socket: str  # the core's HTTP server (a Unix socket)
    log: dict[str, Any]  # bot.logs.setup's arguments
    header_timeout: float = HEADER_TIMEOUT  # the core's bot.edge limits
    body_timeout: float = BODY_TIMEOUT


# -- the pair: framed pickles (both ends are opsbot's own processes) -------------------------

async def read_message(reader: asyncio.StreamReader) -> Any:
    """The next message, or EOFError when the other end closed."""
    try:
        size = FRAME.unpack(await reader.readexactly(FRAME.size))[0]
        return pickle.loads(await reader.readexactly(size))  # noqa: S301 (our own process)
    except asyncio.IncompleteReadError:
        raise EOFError from None


def frame(message: Any) -> bytes:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return FRAME.pack(len(data)) + data


def control_path(settings: Settings) -> Path | None:
    """Where an edge waits for a new core to take its listening socket over: in a folder
    only this user may use (None when the folder is someone else's or open to others: no
    take-over then, nobody else may hand opsbot a socket)."""
    folder = Path(tempfile.gettempdir()) / f"opsbot-{os.getuid()}"
    with contextlib.suppress(FileExistsError):
        folder.mkdir(mode=0o700)
    mode = folder.lstat()
    if mode.st_uid != os.getuid() or mode.st_mode & 0o077 or not folder.is_dir() \
            or folder.is_symlink():
        log.warning("%s is not this user's alone: no take-over of a stopped opsbot's edge",
                    folder)
        return None
    host = settings.listen_host.replace("/", "_").replace(":", "_")
    return folder / f"edge-{host}-{settings.listen_port}.sock"


def listening_socket(settings: Settings) -> socket.socket:
    """OPSBOT_LISTEN bound and listening (OSError EADDRINUSE when another program has it)."""
    info = socket.getaddrinfo(settings.listen_host, settings.listen_port,
                              type=socket.SOCK_STREAM)[0]
    sock = socket.create_server(info[4][:2], family=info[0], backlog=128)
    sock.set_inheritable(True)
    return sock


def take_over(settings: Settings) -> socket.socket | None:
    """The listening socket of an edge left by a core that is gone (blocking; at start-up),
    once that edge has answered what it had taken and ended; None when there is none."""
    path = control_path(settings)
    if path is None:
        return None
    control = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    control.settimeout(30)
    try:
        control.connect(str(path))
    except OSError:  # none there, or a stale file
        control.close()
        return None
    with control:
        control.sendall(b"take over\n")
        _, fds, _, _ = socket.recv_fds(control, 16, 1)
        if not fds:
            return None
        with contextlib.suppress(OSError):
            while control.recv(4096):  # its end: it answered what it had and stopped
                pass
    sock = socket.socket(fileno=fds[0])
    sock.set_inheritable(True)
    log.info("took over the listening socket of the edge that a stopped opsbot left")
    return sock


# -- the core's side -------------------------------------------------------------------------

class EdgeProcess:
    """The core's edge: started, watched and restarted; its hand-overs go to `take`."""

    def __init__(self, settings: Settings, hello: Hello, take: Callable[[Any], None]) -> None:
        self.settings, self.hello, self.take = settings, hello, take
        self.listener: socket.socket | None = None
        self.proc: asyncio.subprocess.Process | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._watch: asyncio.Task[None] | None = None
        self.stopping = False
        self.starts = 0
        self.base_nice: int | None = None  # the core loop's nice before its first edge

    def bind(self) -> None:
        """OPSBOT_LISTEN: taken over from an edge that a stopped core left (once it answered
        what it had: the work it recorded is in the store then), else bound now (blocking,
        at start-up; OSError when another program has it)."""
        self.listener = take_over(self.settings) or listening_socket(self.settings)

    async def start(self) -> None:
        """Returns once the edge answers (after `bind`); raises what kept it from starting."""
        await self._spawn()
        self._watch = asyncio.create_task(self._supervise())

    async def _spawn(self) -> None:
        assert self.listener is not None
        ours, theirs = socket.socketpair()
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *COMMAND, str(theirs.fileno()),
                str(self.listener.fileno()), pass_fds=(theirs.fileno(), self.listener.fileno()),
                stdin=asyncio.subprocess.DEVNULL)
        finally:
            theirs.close()
        if self.base_nice is None:
            from bot.offload import own_nice

            self.base_nice = own_nice()
        lead(self.proc.pid, self.base_nice)  # before the edge, told nothing, starts a thread
        self.starts += 1
        reader, self._writer = await asyncio.open_connection(sock=ours)
        self._writer.write(frame(self.hello))
        try:
            ready = await read_message(reader)
        except EOFError:
            await self.proc.wait()
            raise OSError(f"the edge process ended at start (exit {self.proc.returncode}); "
                          "see the lines above") from None
        assert ready == ("ready",), ready
        self._reader = reader

    async def _supervise(self) -> None:
        while True:
            try:
                while True:
                    self.take(await read_message(self._reader))
            except EOFError:
                pass
            except Exception:  # one bad hand-over must not end the others
                log.exception("a hand-over from the edge process failed")
                continue
            assert self.proc is not None
            code = await self.proc.wait()
            if self.stopping:
                return
            log.warning("the edge process ended (exit %s): starting it again", code)
            await asyncio.sleep(RESTART_PAUSE)
            try:
                await self._spawn()
            except OSError as exc:
                log.error("the edge process could not start again: %s", exc)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    async def stop(self) -> None:
        """No new requests; those under way are answered; the edge ends, then the listening
        socket closes."""
        self.stopping = True
        if self._writer is not None:
            with contextlib.suppress(OSError):
                self._writer.write(frame(("stop",)))
                await self._writer.drain()
        if self.proc is not None and self.proc.returncode is None:
            try:
                await asyncio.wait_for(self.proc.wait(), 30)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        if self._writer is not None:
            self._writer.close()
        if self.listener is not None:
            self.listener.close()


def lead(edge: int, base: int) -> None:
    """The edge EDGE_LEAD steps of nice ahead of the core's loop (the calling thread, at nice
    `base` before its first edge): the edge raised where this process may (root,
    CAP_SYS_NICE), else the calling thread lowered once (on Linux nice is per thread; the
    threads it starts later inherit it; an edge started again then has the loop's nice)."""
    if sys.platform != "linux":
        return
    from bot.offload import lower_priority

    try:
        os.setpriority(os.PRIO_PROCESS, edge, max(-20, base - EDGE_LEAD))
    except OSError:
        lower_priority(base + EDGE_LEAD)


# -- the edge's side -------------------------------------------------------------------------

class CoreLink:
    """The edge's end of the pair: hand-overs to the core while it is there."""

    def __init__(self, writer: asyncio.StreamWriter, core_pid: int) -> None:
        self.writer = writer
        self.core_pid = core_pid
        self.gone = asyncio.Event()

    def send(self, message: Any) -> None:
        """Handed over when the core is there; else it waits in the store for the next core
        (its work row is committed before this is called)."""
        if self.gone.is_set():
            return
        try:
            self.writer.write(frame(message))
        except (OSError, RuntimeError):
            self.lost()

    def lost(self) -> None:
        if not self.gone.is_set():
            log.warning("the core (pid %d) is gone: the edge answers and records; the work "
                        "waits in the store for the next `opsbot serve`", self.core_pid)
            self.gone.set()


def _ephemeral(text: str) -> dict[str, Any]:
    return {"response_type": "ephemeral", "text": text}


def edge_app(hello: Hello, requests: AsyncStore, intake: WebhookIntake, link: CoreLink,
             core: ClientSession, accepting: Callable[[], bool]) -> web.Application:
    from bot.adapters.slack_requests import (
        Replayed,
        Reply,
        click_of,
        command_refusal,
        parse_body,
        signed_answer,
        text_of,
    )
    from bot.commands import instant
    from bot.errors import IngestError

    settings = hello.settings

    async def forward(request: web.Request, body: bytes) -> web.Response | None:
        """The core's answer to the request; None when the core cannot be reached."""
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        try:
            async with core.request(request.method, f"http://opsbot-core{request.path_qs}",
                                    data=body, headers=headers) as resp:
                answer = web.Response(status=resp.status, body=await resp.read())
                for name in KEPT_HEADERS:
                    if name in resp.headers:
                        answer.headers[name] = resp.headers[name]
                return answer
        except (ClientConnectorError, FileNotFoundError):
            return None
        except (ClientError, TimeoutError) as exc:
            return error(503, f"opsbot's core did not answer ({exc.__class__.__name__}); "
                              "retry")

    def forwarded(payload: dict[str, Any]) -> bool:
        """What the core answers: slash commands other than `help`, and clicks it must
        answer itself (no user)."""
        if "command" in payload:
            return command_refusal(payload) is None and \
                instant(str(payload.get("text", ""))) is None
        if payload.get("type") == "block_actions":
            with contextlib.suppress(IngestError):
                click = click_of(payload)
                return click is not None and not click["user"]
        return False

    async def dispatch(payload: dict[str, Any], seen: tuple[str, float] | None) -> Reply:
        if payload.get("type") == "url_verification":
            return {"challenge": text_of(payload.get("challenge"))}
        if "command" in payload:
            text = str(payload.get("text", ""))
            now = command_refusal(payload) or instant(text)
            if now is not None:
                return _ephemeral(now)
            # the core cannot be reached: recorded, done and answered when it is back
            work_id = await requests.add_work("command", {
                "text": text, "user": text_of(payload.get("user_id")), "operator": None,
                "response_url": text_of(payload.get("response_url")),
                "channel": text_of(payload.get("channel_id")), "answered": False})
            link.send(("work", work_id))
            return _ephemeral(f"opsbot is restarting: `{text[:80]}` is recorded; it is done, "
                              "and answered here, as soon as opsbot is back.")
        if payload.get("type") == "block_actions":
            click = click_of(payload)
            if click is None:
                return None  # not one of our buttons: nothing to do
            work_id = await requests.add_work("click", click, seen=seen)
            if work_id is None:
                raise Replayed
            link.send(("work", work_id))
            return None
        log.info("Slack request of type %r acknowledged and ignored",
                 text_of(payload.get("type"))[:40] or "event")
        return None

    answer_signed = signed_answer(settings.slack_signing_secret or "", requests, dispatch)

    async def slack(request: web.Request) -> web.Response:
        if not settings.slack_enabled or settings.socket_mode:
            return await anything(request)  # the core says why not
        try:
            body = await read_body(request)
        except BodyRefused as refused:
            return refused.response
        try:
            payload: dict[str, Any] | None = parse_body(body, request.content_type)
        except IngestError:
            payload = None
        if payload is not None and forwarded(payload) and not link.gone.is_set():
            answered = await forward(request, body)
            if answered is not None:
                return answered
        return await answer_signed(request, body)

    def accepted(group: Any, webhook_id: int) -> None:
        link.send(("alert", webhook_id, group))

    async def anything(request: web.Request) -> web.Response:
        try:
            body = await read_body(request)
        except BodyRefused as refused:
            return refused.response
        answered = None if link.gone.is_set() else await forward(request, body)
        if answered is not None:
            return answered
        if request.method == "GET" and request.path == "/healthz":  # answers, does no work
            ok = await requests.call(store_ok, requests.sync)
            return web.json_response({"status": "restarting" if ok else "error",
                                      "store": "ok" if ok else "not writable"}, status=503)
        return error(503, "opsbot is restarting; retry later")

    app = web.Application(client_max_size=MAX_BODY, middlewares=[one_line_errors])
    app.add_routes([
        web.post("/alerts/alertmanager", alertmanager_handler(settings.alert_token, intake,
                                                              accepting, accepted)),
        web.post("/slack/events", slack),
        web.route("*", "/{tail:.*}", anything)])
    return app


async def serve_edge(hello: Hello, pair: socket.socket, listener: socket.socket, *,
                     ready: asyncio.Event | None = None) -> None:
    """Answer until the core says stop (or SIGTERM, or ORPHAN_GRACE after the core is gone,
    or a new core took the listening socket over). `ready` is set once it answers."""
    from bot.adapters.store import AsyncStore, Store, WebhookIntake
    from bot.redact import redact_logs

    redact_logs()
    settings = hello.settings
    edge.BODY_TIMEOUT = hello.body_timeout  # read by read_body
    store = Store(settings.db, audit_key=settings.audit_key, synchronous="NORMAL")
    store.owner = hello.owner  # the core's rows: it takes them up (or, once gone, the next)
    store.db.make_urgent()  # answers only; the core checkpoints
    requests = AsyncStore(store)
    intake = WebhookIntake(store)
    intake.store.sync.owner = hello.owner
    requests.start_thread()
    intake.store.start_thread()
    reader, writer = await asyncio.open_connection(sock=pair)
    link = CoreLink(writer, hello.core_pid)
    stop = asyncio.Event()
    accepting = True
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    for ignored in (signal.SIGINT, signal.SIGHUP):  # the core says when (a terminal's ^C)
        loop.add_signal_handler(ignored, lambda: None)
    core = ClientSession(connector=UnixConnector(path=hello.core_socket),
                         timeout=ClientTimeout(total=CORE_TIMEOUT))
    runner = web.AppRunner(edge_app(hello, requests, intake, link, core, lambda: accepting),
                           access_log=None, keepalive_timeout=hello.header_timeout,
                           shutdown_timeout=5)
    await runner.setup()
    await web.SockSite(runner, listener).start()
    control_file = control_path(settings)

    async def control(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        """A new core takes the listening socket over: it gets it, this edge stops."""
        if (await r.readline()).strip() != b"take over":
            w.close()
            return
        with socket.fromfd(w.get_extra_info("socket").fileno(), socket.AF_UNIX,
                           socket.SOCK_STREAM) as sock:  # a duplicate: asyncio's has no sendmsg
            socket.send_fds(sock, [b"ok"], [listener.fileno()])
        stop.set()
        taken_over.append(w)

    taken_over: list[asyncio.StreamWriter] = []
    control_server = None
    if control_file is not None:
        with contextlib.suppress(FileNotFoundError):
            control_file.unlink()
        control_server = await asyncio.start_unix_server(control, path=str(control_file))
        os.chmod(control_file, 0o600)

    async def from_core() -> None:
        try:
            while True:
                if await read_message(reader) == ("stop",):
                    stop.set()
                    return
        except (EOFError, OSError):
            link.lost()

    def core_gone() -> None:
        link.lost()
        loop.call_later(ORPHAN_GRACE, stop.set)

    listening = asyncio.create_task(from_core())
    watched = _watch_pid(hello.core_pid, core_gone)
    writer.write(frame(("ready",)))
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        accepting = False
        listening.cancel()
        if watched is not None:
            loop.remove_reader(watched)
            os.close(watched)
        if control_server is not None and control_file is not None:
            control_server.close()
            if not taken_over:
                with contextlib.suppress(FileNotFoundError):
                    control_file.unlink()
        await runner.cleanup()  # answers what it had taken
        await core.close()
        for w in taken_over:  # the new core waits for this: nothing of ours is under way
            w.close()
        writer.close()
        intake.close()
        requests.close()


def _watch_pid(pid: int, gone: Callable[[], None]) -> int | None:
    """A pidfd of `pid` read by the loop: `gone()` once it exits (Linux 5.3+); None where
    there is none (the pair's end of file tells it then)."""
    try:
        fd = os.pidfd_open(pid)
    except (OSError, AttributeError):
        return None
    loop = asyncio.get_running_loop()

    def exited() -> None:
        loop.remove_reader(fd)
        gone()

    loop.add_reader(fd, exited)
    return fd


def main(argv: list[str]) -> int:
    """`python -m bot.edgeproc PAIR_FD LISTENER_FD` (started by EdgeProcess)."""
    pair = socket.socket(fileno=int(argv[-2]))
    listener = socket.socket(fileno=int(argv[-1]))
    pair.setblocking(True)
    size = FRAME.unpack(pair.recv(FRAME.size, socket.MSG_WAITALL))[0]
    hello: Hello = pickle.loads(pair.recv(size, socket.MSG_WAITALL))  # noqa: S301
    from bot import logs

    logs.setup(**hello.log)
    with logs.off_thread():
        log.info("edge process %d answering on %s:%d for opsbot %d", os.getpid(),
                 hello.settings.listen_host, hello.settings.listen_port, hello.core_pid)
        asyncio.run(serve_edge(hello, pair, listener))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
