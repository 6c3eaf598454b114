"""A few hosts' work a turn of the event loop, so that no turn holds the loop for all of them.

The hosts of a run advance through the runbook together: their step results come in at the
same moment, and each host's handling of them (parsing, rendering the next steps, recording:
0.1-3.5 ms of CPU) ran in one turn of the loop, one after the other, before any timer or
answer of that loop could run (20-30 ms for 50 hosts in the ack benchmark, bench/CORE.md).
`await turn()` before such a stretch of synchronous work: at most PER_TURN callers go on in a
turn, the others in the next turns, in the order they came; the loop's timers and I/O run
between the turns.
"""

from __future__ import annotations

import asyncio
import functools
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

PER_TURN = 4  # callers a turn of the loop lets through


class _Turns:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.taken = 0
        self.waiting: deque[asyncio.Future[None]] = deque()
        self.scheduled = False

    async def take(self) -> None:
        if self.taken < PER_TURN and not self.waiting:
            self.taken += 1
            self._schedule()
            return
        ticket = self.loop.create_future()
        self.waiting.append(ticket)
        self._schedule()
        await ticket  # its place in a later turn is counted (a cancelled one is skipped)

    def _schedule(self) -> None:
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self._next_turn)

    def _next_turn(self) -> None:
        """The next turn's callers: woken now, they run in the loop's next turn."""
        self.scheduled, self.taken = False, 0
        while self.waiting and self.taken < PER_TURN:
            ticket = self.waiting.popleft()
            if not ticket.done():
                ticket.set_result(None)
                self.taken += 1
        if self.waiting or self.taken:
            self._schedule()


_BY_LOOP: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Turns] = \
    weakref.WeakKeyDictionary()


def then_turn(call: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """`call`, and a turn (`turn()`) before its caller goes on with what it answered."""
    @functools.wraps(call)
    async def wrapped(*args: P.args, **kwargs: P.kwargs) -> T:
        answer = await call(*args, **kwargs)
        await turn()
        return answer

    return wrapped


async def turn() -> None:
    """Wait, if need be, for a turn of the running loop with room for one more caller."""
    loop = asyncio.get_running_loop()
    turns = _BY_LOOP.get(loop)
    if turns is None:
        turns = _BY_LOOP[loop] = _Turns(loop)
    await turns.take()
