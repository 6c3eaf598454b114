"""Live progress of a run, told behind the work: the runner records into a `Board` (memory
only, never waits), and one `Presenter` per incident renders the latest state of its boards
at most once a second. Steps never wait for chat; chat is told the newest state, coalesced.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from bot.models import RenderedStep, StepResult
from bot.render import Cell, Message, progress_message

log = logging.getLogger("opsbot.progress")
INTERVAL = 1.0  # seconds between two renders of the same incident's progress


class Board:
    """Hosts x steps of one run, as far as they went."""

    def __init__(self, title: str, hosts: list[str]) -> None:
        self.title = title
        self.rows: dict[str, dict[str, Cell]] = {h: {} for h in hosts}
        self.done_hosts: set[str] = set()
        self.finished = False

    def started(self, step: RenderedStep) -> None:
        self.rows.setdefault(step.host, {})[step.step_id] = Cell(step.step_id, step.title)

    def finished_step(self, result: StepResult) -> None:
        step = result.step
        self.rows.setdefault(step.host, {})[step.step_id] = Cell(step.step_id, step.title,
                                                                 result)

    def host_done(self, host: str) -> None:
        self.done_hosts.add(host)

    def message(self) -> Message:
        rows = [(host, list(cells.values()), self.finished or host in self.done_hosts)
                for host, cells in self.rows.items()]
        return progress_message(self.title, rows, self.finished)


Send = Callable[[str, Message], Awaitable[None]]
Job = Callable[[], Awaitable[object]]


class Presenter:
    """One incident's live messages: its boards (each under its own message key) and its root
    message. `changed` returns at once; a task sends the newest rendering of what changed,
    then rests `interval` seconds, so chat sees at most one update a second per message
    whatever the hosts do. A rendering that fails is logged, never raised to the work."""

    def __init__(self, send: Send, interval: float = INTERVAL) -> None:
        self.send = send
        self.interval = interval
        self.boards: dict[str, Board] = {}
        self.jobs: dict[str, Job] = {}
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.renders = 0

    def board(self, key: str, title: str, hosts: list[str]) -> Board:
        board = self.boards[key] = Board(title, hosts)
        self.changed(key)
        return board

    def later(self, key: str, job: Job) -> None:
        """Run `job` (e.g. refresh the root message) soon, once however often it is asked."""
        self.jobs[key] = job
        self.changed(key)

    def changed(self, key: str) -> None:
        self._dirty.add(key)
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._loop(), name="opsbot-presenter")

    async def _loop(self) -> None:
        while self._dirty:
            self._wake.clear()
            await self._flush()
            await asyncio.sleep(self.interval)

    async def _flush(self) -> None:
        keys, self._dirty = sorted(self._dirty), set()
        for key in keys:
            await self._render(key)

    async def _render(self, key: str) -> None:
        board, job = self.boards.get(key), self.jobs.pop(key, None)
        try:
            if board is not None:
                self.renders += 1
                await self.send(key, board.message())
            elif job is not None:
                self.renders += 1
                await job()
        except Exception as exc:  # chat trouble never reaches the work
            log.warning("%s not shown: %s", key, exc)

    async def finish(self, key: str) -> None:
        """The board's run is over: its final state is sent now, then it is dropped."""
        board = self.boards.get(key)
        if board is None:
            return
        board.finished = True
        self._dirty.discard(key)
        await self._render(key)
        self.boards.pop(key, None)

    async def close(self) -> None:
        """What is still waiting is sent (once), then the task ends."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._flush()
