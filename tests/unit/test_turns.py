"""bot.turns: a few callers a turn of the event loop, the rest in the next turns, in order."""

from __future__ import annotations

import asyncio

from bot.turns import PER_TURN, turn


async def _passes(n: int, cancel: frozenset[int] = frozenset()) -> list[object]:
    """The order in which n callers got through, with a 'turn' mark each turn of the loop."""
    seen: list[object] = []
    stop = False

    def mark() -> None:  # a callback each turn of the loop, as a timer that came due would
        seen.append("turn")
        if not stop:
            asyncio.get_running_loop().call_soon(mark)

    async def caller(i: int) -> None:
        await turn()
        seen.append(i)

    asyncio.get_running_loop().call_soon(mark)
    await asyncio.sleep(0)
    tasks = [asyncio.create_task(caller(i)) for i in range(n)]
    await asyncio.sleep(0)
    for i in cancel:
        tasks[i].cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    stop = True
    await asyncio.sleep(0)
    return seen


def _between_marks(seen: list[object]) -> list[int]:
    counts, run = [], 0
    for item in seen:
        if item == "turn":
            counts.append(run)
            run = 0
        else:
            run += 1
    return counts + [run]


def test_callers_pass_a_few_a_turn_in_the_order_they_came() -> None:
    seen = asyncio.run(_passes(5 * PER_TURN + 1))
    assert [i for i in seen if i != "turn"] == list(range(5 * PER_TURN + 1))
    assert max(_between_marks(seen)) == PER_TURN


def test_a_cancelled_caller_gives_its_place_to_the_next() -> None:
    gone = PER_TURN + 1
    seen = asyncio.run(_passes(3 * PER_TURN, cancel=frozenset({gone})))
    assert [i for i in seen if i != "turn"] == [i for i in range(3 * PER_TURN) if i != gone]


def test_each_loop_has_its_own_turns() -> None:
    """A loop that ended with callers waiting leaves nothing behind for the next one."""
    async def abandoned() -> None:
        for _ in range(3 * PER_TURN):
            asyncio.create_task(turn())
        await asyncio.sleep(0)

    asyncio.run(abandoned())
    seen = asyncio.run(_passes(PER_TURN))
    assert [i for i in seen if i != "turn"] == list(range(PER_TURN))
