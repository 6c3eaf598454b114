"""CPU-bound and blocking work off the event loop, a bounded few at a time.

The loop answers Slack within its 3 seconds and times every step; parsing a host's `nginx -T`
or removing a folder on it would hold every request and every other host's step meanwhile.
Two threads are enough: more would only queue for the interpreter's lock.

Work that holds that lock for long stretches (the diagnosis rules: a regex search of a step's
whole text does not release it) goes to worker processes instead in a serving process
(`off_process`): on a thread it still delays every turn of the loop by a search at a time.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import importlib
import logging
import os
import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import BrokenExecutor, ThreadPoolExecutor
from typing import TYPE_CHECKING, ParamSpec, TypeVar

if TYPE_CHECKING:  # multiprocessing on first use: 11-15 ms of every cold `opsbot run`
    from concurrent.futures import ProcessPoolExecutor

P = ParamSpec("P")
T = TypeVar("T")

_POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="opsbot-offload")


async def off_loop(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """`fn(*args, **kwargs)` on the offload threads; its exception, if any, is raised here."""
    return await asyncio.get_running_loop().run_in_executor(
        _POOL, functools.partial(fn, *args, **kwargs))


_SHARED: dict[tuple[Callable[..., object], tuple[Hashable, ...]],
              concurrent.futures.Future[object]] = {}


async def off_loop_shared(fn: Callable[..., T], /, *args: Hashable) -> T:
    """`fn(*args)` on the offload threads, one call for every caller asking for the same
    while it runs (their results are the same object): the 50 hosts of a fleet sharing one
    nginx configuration ask for its parse at once, and an lru_cache serves only the callers
    that come after a parse ended (50 parses of one configuration, holding the interpreter's
    lock and two cores meanwhile)."""
    key = (fn, args)
    future = _SHARED.get(key)
    if future is None:
        future = _SHARED[key] = _POOL.submit(fn, *args)
        future.add_done_callback(lambda _: _SHARED.pop(key, None))
    result: T = await asyncio.wrap_future(future)  # type: ignore[arg-type]
    return result


def prestart(pool: ThreadPoolExecutor, count: int) -> None:
    """Start `count` threads of `pool` now (blocking; at start-up). A pool starts a thread
    when work finds none idle, and the caller of `submit` waits for the new thread's first
    turn on a core: on a loaded machine, with the loop as the caller, a stall of every run."""
    gate = threading.Barrier(count + 1)
    for _ in range(count):
        pool.submit(gate.wait, 10)
    with contextlib.suppress(threading.BrokenBarrierError):  # slow to start: started anyway
        gate.wait(10)


def prestart_offload() -> None:
    """The offload threads, started (see `prestart`)."""
    prestart(_POOL, _POOL._max_workers)


def started_pool(workers: int, name: str) -> ThreadPoolExecutor:
    """A thread pool with its threads started (blocking: on the offload threads, as
    `await off_loop(started_pool, n, name)`, never on the loop; see `prestart`)."""
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
    prestart(pool, workers)
    return pool


_IMPORTS: dict[str, concurrent.futures.Future[object]] = {}


async def import_off_loop(name: str) -> None:
    """Module `name` imported once, on an offload thread (a big package's first import holds
    the loop for a third of a second); every caller awaits that one import. A module being
    imported is in `sys.modules` from its first line, and an `import` of it elsewhere waits for
    the import lock: from the loop, that wait held every run and tick (the 50 hosts of one
    diagnosis tracing at once, the 20 docker steps of a burst)."""
    future = _IMPORTS.get(name)
    if future is None or (future.done() and future.exception() is not None):  # failed: again
        future = _IMPORTS[name] = _POOL.submit(importlib.import_module, name)
    if not future.done():
        await asyncio.wrap_future(future)
    future.result()  # its ImportError, if any, here


log = logging.getLogger(__name__)
_PROCESSES: ProcessPoolExecutor | None = None
# the workers yield to the serving process's threads (its answers): nice is weighed among the
# processes of one scheduling group, and the workers share the server's
WORKER_NICE = 10


def _worker_start(nice: int, server: int) -> None:
    """In each worker: yield to the server's threads (nice), and end when the server does. A
    worker holds its own task queue's write end, so it never reads an end of file when the
    server is killed (SIGKILL, the OOM killer): without this it and the fork server stay
    behind, one set per crash."""
    os.nice(nice)
    try:
        gone = os.pidfd_open(server)  # readable once the server has exited (Linux 5.3+)
    except OSError:  # no pidfd here: ask every 2 s
        def watch() -> None:
            while True:
                try:
                    os.kill(server, 0)
                except (ProcessLookupError, PermissionError):  # gone, or its pid reused
                    os._exit(0)
                time.sleep(2)
    else:
        def watch() -> None:
            import select

            select.select([gone], [], [])
            os._exit(0)
    threading.Thread(target=watch, name="opsbot-server-watch", daemon=True).start()


def _processes() -> ProcessPoolExecutor:
    """The worker processes, started on first use from a fork server that has imported the
    diagnosis (a fork of this multi-threaded process would copy its locks mid-use)."""
    global _PROCESSES
    if _PROCESSES is None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["bot.diagnosis"])
        _PROCESSES = ProcessPoolExecutor(max_workers=min(2, os.cpu_count() or 1), mp_context=ctx,
                                         initializer=_worker_start,
                                         initargs=(WORKER_NICE, os.getpid()))
    return _PROCESSES


async def off_process(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """`fn(*args, **kwargs)` in a worker process (`fn`, its arguments and its result are
    pickled); if the workers cannot run it (one was killed, none can start), on the offload
    threads instead: the work is never lost to the pool."""
    global _PROCESSES
    try:
        return await asyncio.get_running_loop().run_in_executor(
            _processes(), functools.partial(fn, *args, **kwargs))
    except (BrokenExecutor, OSError, RuntimeError) as exc:  # BrokenProcessPool
        log.warning("worker processes unavailable (%s): running %s on a thread",
                    type(exc).__name__, getattr(fn, "__name__", "the work"))
        broken, _PROCESSES = _PROCESSES, None
        if broken is not None:
            broken.shutdown(wait=False, cancel_futures=True)
        return await off_loop(fn, *args, **kwargs)


def stop_processes() -> None:
    """Stop the worker processes (at the end of a serving process; started again on use)."""
    global _PROCESSES
    pool, _PROCESSES = _PROCESSES, None
    if pool is not None:
        pool.shutdown(wait=True, cancel_futures=True)
