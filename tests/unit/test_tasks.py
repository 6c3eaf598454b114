"""Background work asked for from another thread (the HTTP server's) runs on the bot's loop."""

from __future__ import annotations

import asyncio

from bot.tasks import Tasks


async def test_work_handed_over_from_another_threads_loop_runs_on_the_bots_loop() -> None:
    told: list[tuple[int, str]] = []

    async def tell(incident_id: int, line: str) -> None:
        told.append((incident_id, line))

    tasks = Tasks(tell)
    bots_loop = asyncio.get_running_loop()
    ran_on: dict[str, asyncio.AbstractEventLoop] = {}

    async def job(name: str) -> None:
        ran_on[name] = asyncio.get_running_loop()

    async def failing() -> None:
        raise RuntimeError("the job broke")

    async def answer() -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    def from_another_thread() -> tuple[asyncio.AbstractEventLoop, asyncio.AbstractEventLoop]:
        async def main() -> tuple[asyncio.AbstractEventLoop, asyncio.AbstractEventLoop]:
            tasks.spawn(job("spawned"))
            tasks.spawn(failing(), incident_id=7)
            tasks.soon(lambda: ran_on.setdefault("soon", asyncio.get_running_loop()))
            return await tasks.call(answer()), asyncio.get_running_loop()

        return asyncio.run(main())

    called_on, other_loop = await asyncio.to_thread(from_another_thread)
    for _ in range(100):  # handed over: they run at the bot's loop's next turns
        if len(ran_on) == 2 and not tasks.running and told:
            break
        await asyncio.sleep(0.01)
    assert called_on is bots_loop and other_loop is not bots_loop
    assert ran_on == {"spawned": bots_loop, "soon": bots_loop}
    assert told == [(7, "⚠️ internal error: RuntimeError('the job broke')")]


async def test_on_the_bots_own_loop_nothing_is_deferred() -> None:
    async def tell(incident_id: int, line: str) -> None:
        raise AssertionError("nothing fails here")

    tasks = Tasks(tell)
    calls: list[str] = []
    tasks.soon(calls.append, "now")
    assert calls == ["now"]  # called at once, not at the next turn

    async def answer() -> str:
        return "answered"

    assert await tasks.call(answer()) == "answered"


async def test_hand_overs_from_another_thread_keep_their_order() -> None:
    async def tell(incident_id: int, line: str) -> None:
        raise AssertionError("nothing fails here")

    tasks = Tasks(tell)
    got: list[int] = []

    def broken(n: int) -> None:
        raise ValueError(n)

    def from_another_thread() -> None:
        for n in range(200):
            tasks.soon(broken if n == 50 else got.append, n)  # one failing: the rest go on

    await asyncio.to_thread(from_another_thread)
    for _ in range(100):
        if len(got) == 199:
            break
        await asyncio.sleep(0.01)
    assert got == [n for n in range(200) if n != 50]
