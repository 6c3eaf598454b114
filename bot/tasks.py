"""Background work of one process: tasks started after an answer went back, counted per
incident while they run (a recovery sweep never starts a second run of a live incident).

All of it runs on the bot's event loop (the one `Tasks` was made on). The HTTP server answers
on a thread and loop of its own (bot.edge.ServerThread): what it starts or asks of the bot
comes here through `spawn`, `soon` and `call`, which hand it over thread-safely."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from bot.errors import BotError
from bot.redact import redact

log = logging.getLogger("opsbot")

# told in the incident's thread when its background work fails: (incident id, one line)
Tell = Callable[[int, str], Coroutine[Any, Any, None]]
T = TypeVar("T")


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


async def run_on(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T]) -> T:
    """Await `coro` run on `loop`, from any loop (directly when called on `loop` itself)."""
    if _running_loop() is loop:
        return await coro
    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, loop))


class Tasks:
    def __init__(self, tell: Tell) -> None:
        """Made on the bot's running loop: the loop all background work runs on."""
        self.tell = tell
        self.loop = asyncio.get_running_loop()
        self.running: set[asyncio.Task[Any]] = set()
        self.live: Counter[int] = Counter()  # incidents with runs or fixes going on here
        self._handed: list[tuple[Callable[..., object], tuple[Any, ...]]] = []  # by threads
        self._handed_lock = threading.Lock()

    def soon(self, fn: Callable[..., object], /, *args: Any) -> None:
        """`fn(*args)` on the bot's loop: now when called there, else at its next turn. What
        other threads hand over meanwhile is taken in one turn, in order (a burst of webhooks
        wakes the bot's loop once, not once each)."""
        if _running_loop() is self.loop:
            fn(*args)
            return
        with self._handed_lock:
            self._handed.append((fn, args))
            if len(self._handed) > 1:
                return  # the bot's loop was asked already: it takes this one with the rest
        self.loop.call_soon_threadsafe(self._take_handed)

    def _take_handed(self) -> None:
        with self._handed_lock:
            handed, self._handed = self._handed, []
        for fn, args in handed:
            try:
                fn(*args)
            except Exception:  # one failing hand-over must not lose the others
                log.exception("work handed to the bot's loop failed")

    async def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await `coro` run on the bot's loop, from any loop (for what touches the bot's
        loop-bound state: its tasks, locks and outbox)."""
        return await run_on(self.loop, coro)

    def spawn(self, coro: Coroutine[Any, Any, Any], incident_id: int | None = None) -> None:
        """Run work after the HTTP answer went back; failures are logged and told. From any
        thread: the task runs on the bot's loop."""
        if _running_loop() is not self.loop:
            self.soon(self.spawn, coro, incident_id)
            return
        task = asyncio.create_task(coro)
        self.running.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self.running.discard(t)
            if t.cancelled() or t.exception() is None:
                return
            exc = t.exception()
            log.error("background work failed: %r", exc, exc_info=exc)
            if incident_id is not None:
                why = redact(str(exc) if isinstance(exc, BotError)
                             else f"internal error: {exc!r}")
                self.spawn(self.tell(incident_id, f"⚠️ {why}"))

        task.add_done_callback(done)

    def hold(self, incident_id: int, coro: Coroutine[Any, Any, Any]) -> Coroutine[Any, Any, Any]:
        """Count the incident as live from now (before the coroutine starts) until it ends."""
        self.live[incident_id] += 1

        async def held() -> Any:
            try:
                return await coro
            finally:
                self.live[incident_id] -= 1

        return held()

    async def drain(self, timeout: float | None = None) -> int:
        """Wait for background work; past `timeout`, cancel what is left (it is marked
        interrupted and resumed at the next start). Returns how many were cancelled."""
        deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
        while self.running:
            left = None if deadline is None else deadline - asyncio.get_running_loop().time()
            if left is not None and left <= 0:
                pending = list(self.running)
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
                return len(pending)
            await asyncio.wait(list(self.running), timeout=left)
        return 0
