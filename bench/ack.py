"""Ack latency of signed Slack requests under load, and the server's event-loop lag.

    python bench/ack.py serve LAG_JSON     # opsbot serve in-process, its loop watched
    python bench/ack.py edge LAG_JSON FD FD  # its edge process (OPSBOT_EDGE=process), watched
    (the driver, `drive`, is called by bench/run.py)

`serve` runs the same server as `opsbot serve` (settings from OPSBOT_*/SLACK_* in the
environment) with one more task on the bot's loop (where the runs run; the HTTP server answers
on a thread and loop of its own): a 5 ms ticker recording how late each tick came,
from the moment the server is ready (it listens) until it is told to stop (SIGTERM).
On SIGTERM it stops the server and writes the lags (ms) to LAG_JSON. With OPSBOT_EDGE=process
the answers come from the edge process (bot.edgeproc), started through `edge` with the same
ticker on its loop (the answering loop), whose lags go to LAG_JSON.edge when it stops.
With OPSBOT_LAG_TRACE=FILE (off by default), every thread's stack goes to FILE whenever the
ticker is TRACE_AFTER late (faulthandler's watchdog thread, which needs no interpreter lock:
it shows the frame even inside a long C call), again every TRACE_AFTER while the loop stays
blocked, and a line with the lag once the tick comes (how the loop's thread spent it: on a
core, waiting for one, asleep); a line for each answer over TRACE_AFTER (the HTTP thread's),
and one for each SQLite write transaction that waited, ran or committed for over 20 ms; at the
stop, a line per thread of the server and of the processes it started (diagnosis workers,
their fork server): its nice, its CPU and its wait for a core while it served. For finding
causes only: faulthandler reads running threads' frames without their lock, and about one
traced round in three ended in a segfault of the server (the round then fails);
OPSBOT_LAG_TRACE_STACKS=0 keeps the lines and leaves the stacks out (no watchdog, no segfault).

`drive` starts the load (one slash command running the whole nginx-502 diagnosis on the bench
group, and 20 that fetch a container's log), then sends signed slash commands and button clicks
at `rate` requests/s for `seconds`, timing each answer (the ack).
"""

from __future__ import annotations

import asyncio
import faulthandler
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TICK = 0.005
TRACE_AFTER = float(os.environ.get("OPSBOT_LAG_TRACE_AFTER", 0.05))  # s late: OPSBOT_LAG_TRACE
STACKS = os.environ.get("OPSBOT_LAG_TRACE_STACKS", "1") != "0"  # with OPSBOT_LAG_TRACE
# with OPSBOT_LAG_TRACE: the loop's callbacks that ran this many ms or more, listed at a late tick
CALLBACKS = float(os.environ.get("OPSBOT_LAG_TRACE_CALLBACKS", 0))
_slow: list[tuple[float, float, str]] = []  # (ms, ms on a core, callback) since the last tick


def _time_callbacks() -> None:
    """Time every callback the loop runs (asyncio.Handle._run); keep those over CALLBACKS ms."""
    import asyncio.events
    import threading

    run, mine = asyncio.events.Handle._run, threading.get_ident()  # the bot's loop's thread

    def timed(self: asyncio.Handle) -> None:
        if threading.get_ident() != mine:
            return run(self)
        began, cpu = time.perf_counter(), time.thread_time()
        try:
            run(self)
        finally:
            took = (time.perf_counter() - began) * 1e3
            if took >= CALLBACKS:
                task = getattr(self._callback, "__self__", None)  # a task's step or wakeup
                coro = task.get_coro() if isinstance(task, asyncio.Task) else None
                what = getattr(coro, "__qualname__", None) or repr(self)[:200]
                _slow.append((took, (time.thread_time() - cpu) * 1e3, what))

    asyncio.events.Handle._run = timed  # type: ignore[method-assign]
SECRET = "bench-signing-secret"
RESPONSE_URL = "bench"  # the Slack stand-in's response_url that every request carries
USER = "U0ALICE"


def _schedstat() -> tuple[float, float, float]:
    """This thread's ns on a core and ns runnable waiting for one, the process's CPU s."""
    with open("/proc/thread-self/schedstat", "rb") as f:
        ran, waited, _ = f.read().split()
    cpu = os.times()
    return int(ran) / 1e6, int(waited) / 1e6, (cpu.user + cpu.system) * 1e3


async def _watch(lags: list[float], trace: int | None = None) -> None:
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + TICK
        if trace is not None:  # re-armed each tick: fires only when a tick is that late
            if STACKS:
                faulthandler.dump_traceback_later(TICK + TRACE_AFTER, repeat=True, file=trace)
            before = _schedstat()
            _slow.clear()
        await asyncio.sleep(TICK)
        lags.append(max(0.0, loop.time() - due) * 1e3)
        if trace is not None and lags[-1] > TRACE_AFTER * 1e3:
            ran, waited, cpu = (b - a for a, b in zip(before, _schedstat(), strict=True))
            slept = lags[-1] + TICK * 1e3 - ran - waited
            os.write(trace, f"=== tick late by {lags[-1]:.1f} ms at {time.time():.3f}: the "
                     f"loop's thread ran {ran:.1f} ms, waited for a core {waited:.1f} ms, "
                     f"slept (interpreter lock, locks, I/O) {slept:.1f} ms; "
                     f"the process's CPU {cpu:.0f} ms\n".encode())
            for took, ran, what in _slow:
                os.write(trace, f"    callback {took:.1f} ms ({ran:.1f} ms on a core): "
                         f"{what}\n".encode())
        if len(lags) > 2_000_000:  # bounded: ~3 hours of ticks
            del lags[:1_000_000]


def _threads() -> dict[tuple[str, int], tuple[int, int, int]]:
    """(name, tid) -> (nice, ns on a core, ns runnable waiting for one) of every thread of this
    process (named as Python knows them) and of the processes below it (`pid N`)."""
    import threading

    from bench.procs import descendants

    names = {t.native_id: t.name for t in threading.enumerate()}
    found = {}
    for pid in (os.getpid(), *descendants(os.getpid())):
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:  # ended meanwhile
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    ran, waited, _ = f.read().split()
                with open(f"/proc/{pid}/task/{tid}/stat") as f:
                    nice = int(f.read().rsplit(")", 1)[1].split()[16])
            except (OSError, ValueError, IndexError):
                continue
            name = names.get(int(tid), "?") if pid == os.getpid() else f"pid {pid}"
            found[name, int(tid)] = (nice, int(ran), int(waited))
    return found


def _trace_threads(trace: int, before: dict[tuple[str, int], tuple[int, int, int]],
                   after: dict[tuple[str, int], tuple[int, int, int]]) -> None:
    for (name, tid), (nice, ran, waited) in sorted(after.items()):
        _, ran0, waited0 = before.get((name, tid), (nice, 0, 0))
        os.write(trace, f"=== thread {name} ({tid}, nice {nice}) while serving: ran "
                 f"{(ran - ran0) / 1e6:.0f} ms, waited for a core {(waited - waited0) / 1e6:.0f} "
                 f"ms\n".encode())


def _trace_answers(trace: int) -> None:
    """OPSBOT_LAG_TRACE: for each answer that took over TRACE_AFTER, one line with how the
    HTTP thread spent that time (its own schedstat; other requests' work included)."""
    from aiohttp import web

    import bot.server

    timed = bot.server.timed

    @web.middleware
    async def split(request: web.Request, handler: Any) -> web.StreamResponse:
        before, began = _schedstat(), time.perf_counter()
        try:
            return await timed(request, handler)
        finally:
            took = (time.perf_counter() - began) * 1e3
            if took > TRACE_AFTER * 1e3:
                ran, waited, _ = (b - a for a, b in zip(before, _schedstat(), strict=True))
                os.write(trace, f"=== answer took {took:.1f} ms at {time.time():.3f}: the HTTP "
                         f"thread ran {ran:.1f} ms, waited for a core {waited:.1f} ms, slept "
                         f"(store lane, interpreter lock) {took - ran - waited:.1f} ms\n"
                         .encode())

    bot.server.timed = split  # web_app reads it when serve builds the app


def _trace_store(trace: int) -> None:
    """OPSBOT_LAG_TRACE: each SQLite write transaction that waited for the write lock, ran or
    committed for over 20 ms, one line (its thread, and whether it is the request lane's)."""
    import contextlib
    import threading
    from collections.abc import Iterator

    from bot.adapters import sql

    tx = sql.SqliteDatabase.tx

    @contextlib.contextmanager
    def timed_tx(self: sql.SqliteDatabase) -> Iterator[Any]:
        t0 = time.perf_counter()
        with tx(self) as conn:
            t1 = time.perf_counter()
            yield conn
            t2 = time.perf_counter()
        t3 = time.perf_counter()
        if max(t1 - t0, t2 - t1, t3 - t2) > 0.02:
            frame, names = sys._getframe(1), []
            while frame is not None and len(names) < 3:
                if frame.f_code.co_filename.endswith("store.py") and \
                        frame.f_code.co_name not in ("tx", "<lambda>"):
                    names.append(frame.f_code.co_name)
                frame = frame.f_back
            os.write(trace, f"=== tx {'<'.join(names)} on {threading.current_thread().name} "
                     f"(urgent: {self.urgent}) at {time.time():.3f}: waited "
                     f"{(t1 - t0) * 1e3:.1f} ms, body {(t2 - t1) * 1e3:.1f} ms, "
                     f"commit {(t3 - t2) * 1e3:.1f} ms\n"
                     .encode())

    sql.SqliteDatabase.tx = timed_tx  # type: ignore[method-assign]


def edge_watched(out: Path, fds: list[str]) -> int:
    """The edge process (bot.edgeproc.main) with a 5 ms ticker on its loop."""
    from bot import edgeproc

    serve_edge = edgeproc.serve_edge

    async def watched(*args: Any) -> None:
        lags: list[float] = []
        ready = asyncio.Event()

        async def once_ready() -> None:  # its start-up (the store, imports) is not serving
            await ready.wait()
            await _watch(lags)

        ticker = asyncio.create_task(once_ready())
        try:
            await serve_edge(*args, ready=ready)
        finally:
            ticker.cancel()
            out.write_text(json.dumps(lags))  # noqa: ASYNC240 (once, at exit)

    edgeproc.serve_edge = watched
    return edgeproc.main(fds)


async def serve_watched(out: Path) -> None:
    from bot import edgeproc
    from bot.config import load_settings
    from bot.server import serve

    edgeproc.COMMAND = [sys.executable, str(ROOT / "bench" / "ack.py"), "edge", f"{out}.edge"]

    lags: list[float] = []
    stop, ready = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()
    traced = os.environ.get("OPSBOT_LAG_TRACE")
    trace = os.open(traced, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644) if traced else None
    if trace is not None:
        _trace_answers(trace)
        _trace_store(trace)
        if CALLBACKS:
            _time_callbacks()
    probe = os.environ.get("OPSBOT_ACK_PROBE")
    if probe:
        from bench import ackprobe

        ackprobe.install()
        ackprobe.watch_loop()
    threads: list[dict[tuple[str, int], tuple[int, int, int]]] = []

    def stopping() -> None:
        if trace is not None:  # the threads as they served (the stop ends some of them)
            threads.append(_threads())
        stop.set()

    loop.add_signal_handler(signal.SIGTERM, stopping)

    async def watch_once_ready() -> None:  # start-up (imports, runbooks) and the stop
        await ready.wait()                  # (draining, closing) are not serving
        ticker = asyncio.create_task(_watch(lags, trace))
        served = _threads() if trace is not None else {}
        await stop.wait()
        ticker.cancel()
        if trace is not None:
            faulthandler.cancel_dump_traceback_later()
            _trace_threads(trace, served, threads[0] if threads else _threads())

    watcher = asyncio.create_task(watch_once_ready())
    try:
        await serve(load_settings(serving=True), ready=ready, stop=stop)
    finally:
        watcher.cancel()
        out.write_text(json.dumps(lags))  # noqa: ASYNC240 (once, at exit)
        if probe:
            ackprobe.dump(probe)


async def drive(url: str, fake_root: str, seconds: float, rate: float,
                load: list[str]) -> dict[str, Any]:
    """Signed requests at `rate`/s for `seconds` after starting `load` (slash command texts);
    returns the ack latencies (ms) of slash commands and of clicks, and the statuses."""
    import aiohttp

    from tests.slacksign import block_actions_body, sign, slash_command_body

    respond = f"{fake_root}_fake/respond/{RESPONSE_URL}"  # bench/run.py makes it answer
    n = 0
    probe = os.environ.get("OPSBOT_ACK_PROBE")  # bench/ackprobe.py: each request's own line
    sent: list[dict[str, Any]] = []

    def unique() -> str:
        nonlocal n
        n += 1
        return f"{time.time():.6f}.{n}.bench"

    # a connection per request, as from many Slack senders: no keep-alive connection that the
    # server closes idle (after HEADER_TIMEOUT) can race a request written into it
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        async def post(body: bytes, kind: str = "load") -> tuple[float, int]:
            headers = sign(SECRET, body)
            began, wall = time.perf_counter(), time.time()
            async with http.post(f"{url}/slack/events", data=body, headers=headers) as resp:
                await resp.read()
                ms = (time.perf_counter() - began) * 1e3
            if probe:
                sent.append({"sig": headers["X-Slack-Signature"], "t0": wall, "ms": ms,
                             "kind": kind})
            return ms, resp.status

        started = [await post(slash_command_body(text, USER, response_url=respond,
                                                 trigger_id=unique())) for text in load]
        slash: list[float] = []
        clicks: list[float] = []
        statuses: dict[int, int] = {}
        tasks = []

        async def one(i: int) -> None:
            if i % 2:
                body = block_actions_body("opsbot.approve", f"bench-token-{i}", USER,
                                          "C0INCIDENT", f"{time.time():.6f}",
                                          response_url=respond, trigger_id=unique())
            else:
                body = slash_command_body("help", USER, response_url=respond,
                                          trigger_id=unique())
            ms, status = await post(body, "click" if i % 2 else "slash")
            (clicks if i % 2 else slash).append(ms)
            statuses[status] = statuses.get(status, 0) + 1

        loop = asyncio.get_running_loop()
        lags: list[float] = []  # OPSBOT_ACK_PROBE: the driver's own loop, as the server's
        ticker = asyncio.create_task(_watch(lags)) if probe else None
        t0 = loop.time()
        for i in range(int(seconds * rate)):
            delay = t0 + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.wait_for(asyncio.gather(*tasks), 120)
        if ticker is not None:
            ticker.cancel()
    if probe:
        Path(f"{probe}.driver").write_text(json.dumps(sent))  # noqa: ASYNC240 (once)
        Path(f"{probe}.driver-lag").write_text(json.dumps(lags))  # noqa: ASYNC240
    return {"slash_ms": slash, "click_ms": clicks, "statuses": statuses,
            "load_acks": [s for _, s in started]}


def main() -> int:
    if len(sys.argv) == 5 and sys.argv[1] == "edge":
        return edge_watched(Path(sys.argv[2]), sys.argv[3:])
    if len(sys.argv) != 3 or sys.argv[1] != "serve":
        raise SystemExit("usage: bench/ack.py serve LAG_JSON")
    asyncio.run(serve_watched(Path(sys.argv[2])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
