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
import hmac
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from aiohttp import http_exceptions, web

from bot.ingest import MAX_PAYLOAD
from bot.tasks import run_on

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


class ServerThread:
    """`app` served on `host:port` by a thread with an event loop of its own."""

    def __init__(self, app: web.Application, host: str, port: int, **runner: Any) -> None:
        self.app, self.host, self.port, self.runner_options = app, host, port, runner
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
            await web.TCPSite(runner, self.host, self.port).start()
            self._listening.set_result(None)
            await self._stop.wait()
        finally:
            await runner.cleanup()
