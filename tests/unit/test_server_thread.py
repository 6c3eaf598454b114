"""The HTTP server's thread when it cannot listen (bot.edge.ServerThread)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import socket
import threading

import pytest
from aiohttp import web

from bot.edge import ServerThread


async def test_stopping_a_server_that_failed_to_listen_never_raises() -> None:
    """A server that cannot bind reports it through start(), then closes its loop and ends.
    `serve` stops it on that path; the stop can come after the loop closed and before the
    thread said it ended (under load, in one CI run: 'Event loop is closed' and a traceback
    instead of the one-line 'cannot listen' error). The window is held open here."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = ServerThread(web.Application(), "127.0.0.1", taken.getsockname()[1])
        with pytest.raises(OSError):
            await server.start()
    server._thread.join()  # the real thread is done; its window is rebuilt below
    closed = asyncio.new_event_loop()  # the thread's loop as it is in that window
    closed.close()
    server.loop = closed
    server._stop = asyncio.Event()
    server._ended = ended = concurrent.futures.Future()
    threading.Timer(0.2, ended.set_result, (None,)).start()
    await server.stop()  # raised RuntimeError before
    assert ended.done()
