"""Answered webhooks waiting to be processed: one worker takes them in the order they came, in
batches, and answering comes first.

A webhook is durable (its work row committed) before it is answered, so this queue only orders
and paces the processing: a process that dies with webhooks queued resumes them at its next
start. During a burst (webhooks being answered right now) the worker waits until the burst
pauses, at most MAX_DEFER after the oldest webhook arrived, and then takes up to BATCH at a
time (while the burst goes on, it then rests as long as the batch took: the answers, on the
HTTP server's own thread, keep at least half of the interpreter): a storm of alerts of many
groups opens its incidents a batch per transaction instead of competing, a webhook at a time,
with the answers for the cores.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

from bot.models import AlertGroup

log = logging.getLogger("opsbot")

BATCH = 50  # webhooks processed together (one transaction for their incidents)
MAX_DEFER = 5.0  # seconds an answered webhook may wait for a burst to pass
POLL = 0.02  # seconds between looks at whether the burst paused

Item = tuple[AlertGroup, int]  # the parsed payload and its webhook id


class AlertQueue:
    """Lives on the bot's loop: `put` is called there (bot.service.Opsbot.accept_alert hands
    each answered webhook over from the HTTP server's thread)."""

    def __init__(self, handle: Callable[[Sequence[Item]], Awaitable[None]],
                 busy: Callable[[], bool],
                 spawn: Callable[[Coroutine[Any, Any, Any]], None]) -> None:
        """`handle` processes a batch in order; `busy` says webhooks are being answered now;
        `spawn` runs the worker as supervised background work (a stop waits for it)."""
        self.handle, self.busy, self.spawn = handle, busy, spawn
        self._items: deque[tuple[float, Item]] = deque()
        self._working = False
        self.batches = 0

    def __len__(self) -> int:
        return len(self._items)

    def put(self, group: AlertGroup, webhook_id: int) -> None:
        self._items.append((time.monotonic(), (group, webhook_id)))
        if not self._working:
            self._working = True
            self.spawn(self._work())

    async def _work(self) -> None:
        try:
            while self._items:
                oldest = self._items[0][0]
                for _ in range(int(MAX_DEFER / POLL)):  # polled: one worker, cheap
                    if not self.busy() or time.monotonic() - oldest >= MAX_DEFER:
                        break
                    await asyncio.sleep(POLL)
                batch = [self._items.popleft()[1]
                         for _ in range(min(BATCH, len(self._items)))]
                began = time.monotonic()
                try:
                    await self.handle(batch)
                except Exception:  # their work rows stay pending: the next start does them
                    log.exception("processing %d webhook(s) failed", len(batch))
                self.batches += 1
                if self.busy():  # past its deferral in a long burst: at most half the loop
                    await asyncio.sleep(time.monotonic() - began)
        finally:
            self._working = False
