"""What every HTTP request meets first: the server's own thread, bounded reads, one-line
errors, bearer tokens.

The HTTP server (and Slack's Socket Mode, when used) runs on a thread and event loop of its
own (`ServerThread`): a 50-host diagnosis keeps the bot's loop busy with SSH packets, rules
and store results, and an answer to Slack or Alertmanager waited behind all of that for its
turn. On its own loop an answer waits only for the interpreter's lock. Handlers hand work to
the bot's loop thread-safely (bot.tasks.Tasks); what they store goes through the store's lanes,
which any loop may await.

aiohttp's `request.content.read(n)` returns only what is buffered, so a body sent in many
packets (chunked transfer, a slow link) would be cut short; `read_body` reads to the end, up to a
size limit and within a time limit.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hmac
import logging
import os
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from aiohttp import http_exceptions, web

from bot.adapters.sql import store_errors
from bot.errors import IngestError
from bot.ingest import MAX_PAYLOAD, parse_alertmanager
from bot.models import AlertGroup
from bot.tasks import run_on

if TYPE_CHECKING:
    from bot.adapters.store import Store, WebhookIntake

log = logging.getLogger("opsbot.server")

T = TypeVar("T")
MAX_BODY = MAX_PAYLOAD  # bytes, for every POST endpoint
HEADER_TIMEOUT = 10.0  # seconds for a connection to deliver a request's headers (idle too)
BODY_TIMEOUT = 15.0  # seconds to receive a whole body once its headers arrived


def error(status: int, reason: str) -> web.Response:
    """The one shape of every refusal: a JSON object with one line."""
    line = reason.splitlines()[0] if reason else "error"
    return web.json_response({"error": line[:300]}, status=status)


class BodyRefused(Exception):
    def __init__(self, response: web.Response) -> None:
        super().__init__(response.text)
        self.response = response


async def read_body(request: web.Request, limit: int = MAX_BODY,
                    timeout: float | None = None) -> bytes:
    """The whole body (all packets, chunked or not), or BodyRefused: 413 over `limit`,
    408 when it does not arrive in time, 400 when the sender stops half-way."""
    if (request.content_length or 0) > limit:
        raise BodyRefused(error(413, f"body over {limit} bytes"))
    if request.content.is_eof():  # all of it arrived with the headers: no wait, no timer
        body = await request.content.read()
        if len(body) > limit:
            raise BodyRefused(error(413, f"body over {limit} bytes"))
        return body
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(BODY_TIMEOUT if timeout is None else timeout):
            while True:
                chunk = await request.content.read(65536)
                if not chunk:
                    break
                size += len(chunk)
                if size > limit:
                    raise BodyRefused(error(413, f"body over {limit} bytes"))
                chunks.append(chunk)
    except TimeoutError:
        raise BodyRefused(error(408, "the body did not arrive in time")) from None
    except (ConnectionError, asyncio.IncompleteReadError, http_exceptions.HttpProcessingError,
            web.HTTPException) as exc:
        raise BodyRefused(error(400, f"the body could not be read: {exc}")) from None
    return b"".join(chunks)


def bearer_ok(header: str | None, token: str) -> bool:
    """`Authorization: Bearer <token>`, compared in constant time. Header bytes that are not
    UTF-8 (aiohttp keeps them as surrogates) simply do not match."""
    given = (header or "").encode("utf-8", "surrogateescape")
    return hmac.compare_digest(given, f"Bearer {token}".encode())


def alertmanager_handler(token: str | None, intake: WebhookIntake,
                         accepting: Callable[[], bool],
                         accepted: Callable[[AlertGroup, int], None]
                         ) -> Callable[[web.Request], Coroutine[Any, Any, web.Response]]:
    """POST /alerts/alertmanager. 4xx only for what is not alerts (Alertmanager drops those);
    our own failures are 5xx (the store: 503 from `one_line_errors`), which Alertmanager
    retries. Each webhook is on disk (with its work row) before it is answered, then
    `accepted(group, webhook_id)`."""
    from bot.adapters.store import WebhookIn

    async def alertmanager(request: web.Request) -> web.Response:
        if not token:
            return error(401, "alert webhooks are refused: OPSBOT_ALERT_TOKEN is not set")
        if not bearer_ok(request.headers.get("Authorization"), token):
            return error(401, "missing or wrong bearer token")
        try:
            body = await read_body(request)
        except BodyRefused as refused:
            return refused.response
        if not accepting():
            return error(503, "opsbot is stopping; retry later")
        remote = request.remote or ""
        try:
            group = parse_alertmanager(body)
        except IngestError as exc:  # kept all the same, with why it was refused
            await intake.record(WebhookIn("alertmanager", body, remote, rejected=str(exc)))
            return error(400, str(exc))
        # on disk (with its work row) before the answer: a crash after the 200 loses nothing
        webhook_id = await intake.record(WebhookIn("alertmanager", body, remote))
        accepted(group, webhook_id)
        return web.Response(body=b'{"status": "accepted", "webhook": %d, "alerts": %d}'
                            % (webhook_id, len(group.alerts)), content_type="application/json")

    return alertmanager


def store_ok(store: Store) -> bool:
    """Readable, and its file and folder writable by us: checked without writing."""
    try:
        store.db.execute("SELECT count(*) FROM meta").fetchone()
    except store_errors():
        return False
    if store.shared or store.path == ":memory:":
        return True
    path = Path(store.path)
    return os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)


@web.middleware
async def one_line_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """No traceback reaches a caller: the store failing is a 503 (senders retry), anything
    else unexpected a 500; the details go to opsbot's own log."""
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except web.HTTPException as exc:  # aiohttp's own 404, 405, 413...: the same JSON line
        if exc.status < 400:
            raise
        refusal = error(exc.status, exc.reason)
        if "Allow" in exc.headers:
            refusal.headers["Allow"] = exc.headers["Allow"]
        return refusal
    except store_errors() as exc:
        log.error("%s %s: the store cannot be written: %s", request.method, request.path, exc)
        return error(503, f"the store cannot be written ({exc}); nothing was accepted, "
                           "retry later")
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return error(500, "internal error; see opsbot's log")


class ServerThread:
    """`app` served on `host:port` (or on the Unix socket `path`) by a thread with an event
    loop of its own."""

    def __init__(self, app: web.Application, host: str, port: int, *, path: str | None = None,
                 **runner: Any) -> None:
        self.app, self.host, self.port, self.runner_options = app, host, port, runner
        self.path = path
        self.loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._listening: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._ended: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._main, name="opsbot-http", daemon=True)

    async def start(self) -> None:
        """Returns once the server listens; raises what kept it from listening (OSError)."""
        self._thread.start()
        await asyncio.wrap_future(self._listening)

    async def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await `coro` run on the server's loop, for what must live there (Socket Mode's
        websocket, whose envelopes are answered like the HTTP requests)."""
        assert self.loop is not None, "start() first"
        return await run_on(self.loop, coro)

    async def stop(self) -> None:
        """Stop taking requests, let those under way finish (aiohttp's shutdown_timeout),
        end the thread."""
        if self.loop is not None and self._stop is not None and not self._ended.done():
            # a server that failed to listen closes its loop just before it ends: nothing to stop
            with contextlib.suppress(RuntimeError):  # "Event loop is closed"
                self.loop.call_soon_threadsafe(self._stop.set)
        await asyncio.wrap_future(self._ended)

    def _main(self) -> None:
        loop = self.loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:
            if not self._listening.done():
                self._listening.set_exception(exc)
        finally:
            loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()
            if not self._listening.done():
                self._listening.set_exception(RuntimeError("the HTTP server stopped"))
            self._ended.set_result(None)

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        runner = web.AppRunner(self.app, **self.runner_options)
        await runner.setup()
        try:
            if self.path is not None:
                await web.UnixSite(runner, self.path).start()
            else:
                await web.TCPSite(runner, self.host, self.port).start()
            self._listening.set_result(None)
            await self._stop.wait()
        finally:
            await runner.cleanup()
