"""The Slack outbox: every post, update and upload is a row of the store first, then sent.

One sender per process sends its rows oldest first, so each thread keeps its order. Slack
saying 429 is waited out for its Retry-After; a 5xx, a refused or broken connection backs off and
tries again, as long as it takes (an outage of an hour loses nothing). A message changed while it
waits is sent once, in its latest state. A post whose answer was lost (the connection broke after
Slack may have taken it) is looked up before it is sent again, so it never appears twice. Rows
of a process that died are taken over by the next server.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import contextvars
import logging
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from bot.errors import BotError
from bot.metrics import Metrics
from bot.models import Incident, OutboxItem, canonical_json, sha256_hex
from bot.ports import Store
from bot.render import Message

log = logging.getLogger("opsbot.outbox")

BACKOFF_FIRST, BACKOFF_MAX = 0.5, 30.0  # seconds, doubled on each transient failure
ADOPT_EVERY = 5.0  # seconds between looks for rows of processes that are gone


@dataclass(frozen=True)
class Outgoing:
    """One outbox row as a transport sees it."""

    id: int
    incident: Incident
    key: str  # "root", a thread message's key, or an upload's
    message: Message | None = None
    ts: str | None = None  # the message's ts once posted: then it is updated
    upload: tuple[str, str | bytes, str] | None = None  # filename, content (text or bytes), title
    maybe_sent: bool = False  # an earlier try may have reached Slack

    @property
    def is_root(self) -> bool:
        return self.key == "root"


@dataclass(frozen=True)
class Delivered:
    channel: str | None
    ts: str | None
    updated: bool


class DeliveryError(BotError):
    """Slack did not take a message. `permanent`: it never will (the row is given up);
    otherwise try again after `retry_after` (Slack said) or a back-off."""

    def __init__(self, message: str, *, permanent: bool = False, retry_after: float | None = None,
                 maybe_sent: bool = False, kind: str = "error") -> None:
        super().__init__(message)
        self.permanent, self.retry_after, self.maybe_sent, self.kind = \
            permanent, retry_after, maybe_sent, kind


class _Collected:
    def __init__(self) -> None:
        self.rows: list[tuple[int, str, str, dict[str, Any]]] = []
        self.open = True


_together: contextvars.ContextVar[_Collected | None] = contextvars.ContextVar(
    "opsbot_outbox_together", default=None)


class Transport(Protocol):
    async def deliver(self, item: Outgoing) -> Delivered:
        """Post, update or upload; raise DeliveryError when Slack did not take it."""

    async def close(self) -> None: ...


def message_content(msg: Message) -> dict[str, Any]:
    return {"text": msg.text, "blocks": msg.blocks, "detail": msg.detail}


class Outbox:
    def __init__(self, store: Store, transport: Transport, metrics: Metrics) -> None:
        self.store = store
        self.transport = transport
        self.metrics = metrics
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._backoff = BACKOFF_FIRST
        self._blocked_until = 0.0  # monotonic time before which nothing is tried

    # -- putting things in -------------------------------------------------------------------
    async def message(self, incident_id: int, key: str, msg: Message) -> None:
        collected = _together.get()
        if collected is not None and collected.open:
            collected.rows.append((incident_id, key, "message", message_content(msg)))
            return
        await self.store.enqueue(incident_id, key, "message", message_content(msg))
        self._wake.set()

    @contextlib.asynccontextmanager
    async def together(self) -> AsyncIterator[None]:
        """Messages this task puts in meanwhile go to the store in one transaction when the
        block ends (the threads of a batch of incidents), in the order they were put."""
        collected = _Collected()
        token = _together.set(collected)
        try:
            yield
        finally:
            _together.reset(token)
            collected.open = False  # tasks started inside (they copied the context) go direct
            if collected.rows:
                await self.store.enqueue_many(collected.rows)
                self._wake.set()

    async def upload(self, incident_id: int, key: str, filename: str, content: str | bytes,
                     title: str) -> None:
        """A file for the incident's thread: text, or bytes (an image), kept in the row as
        base64."""
        data = {"content": content} if isinstance(content, str) else \
            {"content_base64": base64.b64encode(content).decode("ascii")}
        await self.store.enqueue(incident_id, key, "upload",
                                 {"filename": filename, "title": title, **data})
        self._wake.set()

    # -- sending -------------------------------------------------------------------------------
    def wake(self) -> None:
        """Look for waiting rows now (another replica wrote some: its NOTIFY)."""
        self._wake.set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="opsbot-outbox")

    async def _run(self) -> None:
        last_adopt = 0.0
        # Python 3.11's wait_for loses a cancellation that arrives as the wake-up event is set
        # (a message enqueued just before stop()): the flag ends the loop then
        while not self._stopping:
            try:
                if time.monotonic() - last_adopt > ADOPT_EVERY:
                    last_adopt = time.monotonic()
                    adopted = await self.store.adopt_outbox()
                    if adopted:
                        log.info("outbox: took over %d message(s) left by a stopped process",
                                 adopted)
                self._wake.clear()  # before looking, so that nothing enqueued meanwhile waits
                sent = await self.send_some()
                blocked = self._blocked_until - time.monotonic()
                if blocked > 0:
                    await asyncio.sleep(blocked)
                elif sent == 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), ADOPT_EVERY)
            except asyncio.CancelledError:
                raise
            except Exception:  # the store failing: keep the loop, try again soon
                log.exception("outbox: sending failed")
                await asyncio.sleep(1)

    async def send_some(self, deadline: float | None = None) -> int:
        """Send waiting rows in order until one fails (then wait as Slack asks, within the
        deadline) or none is left; returns how many went."""
        sent = 0
        for row in await self.store.outbox_pending(100):
            if deadline is not None and time.monotonic() >= deadline:
                return sent  # paced sending (about one post a second) must not outlast it
            wait = self._blocked_until - time.monotonic()
            if wait > 0:
                if deadline is not None and time.monotonic() + wait > deadline:
                    return sent
                await asyncio.sleep(wait)
            if not await self._send(row):
                return sent
            sent += 1
        return sent

    async def _send(self, row: OutboxItem) -> bool:
        item = await self._outgoing(row)
        try:
            done = await self.transport.deliver(item)
        except DeliveryError as exc:
            self.metrics.slack_errors.labels(kind=exc.kind).inc()
            if exc.permanent:
                log.warning("%s: Slack refused %s for good: %s", item.incident.ref, item.key, exc)
                await self.store.outbox_failed(row, str(exc))
                return True
            delay = exc.retry_after if exc.retry_after is not None else self._backoff
            if exc.retry_after is None:
                self._backoff = min(self._backoff * 2, BACKOFF_MAX)
            self._blocked_until = time.monotonic() + delay
            log.warning("%s: %s not sent (%s); trying again in %.1fs", item.incident.ref,
                        item.key, exc, delay)
            await self.store.outbox_retry(row.id, str(exc), exc.maybe_sent)
            return False
        self._backoff = BACKOFF_FIRST
        content = row.content
        if item.upload:
            data = item.upload[1]
            audit = {"filename": content["filename"], "sha256": sha256_hex(data),
                     "characters" if isinstance(data, str) else "bytes": len(data)}
        else:
            audit = {"key": item.key, "ts": done.ts or item.ts, "text": content["text"][:300],
                     "sha256": sha256_hex(canonical_json([content["text"], content["blocks"]]))}
        await self.store.outbox_sent(row, done.channel, done.ts, done.updated, audit)
        return True

    async def _outgoing(self, row: OutboxItem) -> Outgoing:
        incident, ts = await self.store.outbox_target(row)
        content: Mapping[str, Any] = row.content
        if row.kind == "upload":
            data: str | bytes = content["content"] if "content" in content else \
                base64.b64decode(content["content_base64"])
            return Outgoing(row.id, incident, row.key,
                            upload=(content["filename"], data, content["title"]),
                            maybe_sent=bool(row.maybe_sent))
        msg = Message(text=content["text"], blocks=content["blocks"],
                      detail=content.get("detail", ""))
        return Outgoing(row.id, incident, row.key, message=msg, ts=ts,
                        maybe_sent=bool(row.maybe_sent))

    async def flush(self, timeout: float) -> int:
        """Send what waits, as far as Slack allows within `timeout`; returns what is left."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            left = await self.store.outbox_pending(1)
            if not left:
                return 0
            await self.send_some(deadline)
            if self._blocked_until > deadline:
                break
        return len(await self.store.outbox_pending(100_000))

    async def stop(self, timeout: float) -> int:
        """Stop the background sender, then flush; returns how many rows are left."""
        if self._task is not None:
            self._stopping = True
            self._wake.set()
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task, self._stopping = None, False
        left = await self.flush(timeout)
        if left:
            log.warning("outbox: %d message(s) not sent yet; the next start sends them", left)
        return left
