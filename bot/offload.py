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
import sys
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


def prestart(pool: ThreadPoolExecutor, count: int, then: Callable[..., object] | None = None,
             *args: object) -> None:
    """Start `count` threads of `pool` now (blocking; at start-up), and have each of them call
    `then(*args)` once. A pool starts a thread when work finds none idle, and the caller of
    `submit` waits for the new thread's first turn on a core: on a loaded machine, with the
    loop as the caller, a stall of every run."""
    gate = threading.Barrier(count + 1)

    def meet() -> None:
        if then is not None:
            then(*args)
        gate.wait(10)

    for _ in range(count):
        pool.submit(meet)
    with contextlib.suppress(threading.BrokenBarrierError):  # slow to start: started anyway
        gate.wait(10)


def started_pool(workers: int, name: str) -> ThreadPoolExecutor:
    """A thread pool with its threads started (blocking: on the offload threads, as
    `await off_loop(started_pool, n, name)`, never on the loop; see `prestart`)."""
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
    prestart(pool, workers)
    return pool


def start_default_executor() -> Callable[[], None]:
    """The running loop's default executor (asyncssh's connection set-up, name lookups) with
    its threads started now (blocking: at start-up, from the loop's thread, whose priority
    they keep). asyncio starts one of its threads per call that finds none idle, from the
    loop's thread, which then waits for the new thread's first turn on a core: in the ack
    bench a connection to a host starting another thread held the loop for 80 ms. Returns
    what to call at the end: the loop gets an executor that starts threads on demand again,
    as asyncio's own does, and these threads end."""
    loop = asyncio.get_running_loop()
    pool = started_pool(min(32, (os.cpu_count() or 1) + 4), "opsbot-loop")  # asyncio's size
    loop.set_default_executor(pool)

    def restore() -> None:
        loop.set_default_executor(ThreadPoolExecutor(thread_name_prefix="asyncio"))
        pool.shutdown(wait=False)

    return restore


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
# Batch work (the diagnosis workers and their fork server, the offload threads, the docker
# steps' threads) yields the cores to the serving threads (the answers to Slack and
# Alertmanager, the bot's loop): `BATCH_NICE` steps of nice below them. Nice is weighed among
# the threads of one scheduling group (a cgroup, an autogroup), so this never takes cores from
# other programs' work; it decides who goes first inside opsbot. Not lowered: what holds a lock
# an answer waits for (the store's threads and the database's write lock: a run's transaction
# preempted by the loop's work would hold the request lane meanwhile).
BATCH_NICE = 10  # OPSBOT_BATCH_NICE
PRELOAD = ["bot.diagnosis"]  # imported once by the workers' fork server
_batch_nice: int | None = None  # what batch work runs at (absolute), once `serve` set it


def own_nice() -> int:
    """The calling thread's nice (on Linux nice is per thread: PRIO_PROCESS with 0)."""
    return os.getpriority(os.PRIO_PROCESS, 0)


def lower_priority(nice: int) -> None:
    """The calling thread (only it, on Linux) at `nice` when that is lower in priority than
    where it is; raising a priority needs a privilege and is never attempted. Elsewhere (where
    PRIO_PROCESS would take the whole process) nothing changes."""
    if sys.platform != "linux":
        return
    with contextlib.suppress(OSError):  # not permitted in a sandbox: nothing is lost
        if nice > own_nice():
            os.setpriority(os.PRIO_PROCESS, 0, min(19, nice))


def batch_nice() -> int:
    """The nice batch work runs at: what `serve_batch_below` set, else `BATCH_NICE` below the
    calling thread."""
    return _batch_nice if _batch_nice is not None else min(19, own_nice() + BATCH_NICE)


def serve_batch_below(steps: int) -> None:
    """In a serving process, from its loop's thread (blocking, at start-up): batch work `steps`
    of nice below this thread from now on (0: at the same priority). The offload threads are
    lowered at once; the threads they start (the docker steps' pool) inherit it, and the
    worker processes, started from them, lower themselves to it."""
    global _batch_nice
    _batch_nice = min(19, own_nice() + max(0, steps))
    prestart(_POOL, _POOL._max_workers, lower_priority, _batch_nice)


def _worker_start(nice: int, server: int) -> None:
    """In each worker: yield to the server's threads (nice), and end when the server does. A
    worker holds its own task queue's write end, so it never reads an end of file when the
    server is killed (SIGKILL, the OOM killer): without this it and the fork server stay
    behind, one set per crash."""
    lower_priority(nice)
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


def _started_processes() -> ProcessPoolExecutor:
    """The worker processes, started (blocking: on an offload thread, never on the loop) from
    a fork server that has imported the diagnosis (a fork of this multi-threaded process would
    copy its locks mid-use). Starting the fork server is a Python start-up and that import,
    about a third of a second of CPU: on the loop it held every run and tick meanwhile.
    Started from an offload thread, the fork server is at its priority (a child starts at the
    nice of the thread that forked it: the batch priority when serving); each worker lowers
    itself to `batch_nice()`."""
    global _PROCESSES
    if _PROCESSES is None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        nice = batch_nice()
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(PRELOAD)
        workers = min(2, os.cpu_count() or 1)
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx,
                                   initializer=_worker_start, initargs=(nice, os.getpid()))
        try:  # every worker started now, from this thread (a pool starts one per call that
            # finds none idle, from the caller's thread: the loop)
            for started in [pool.submit(os.getpid) for _ in range(workers)]:
                started.result()
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        _PROCESSES = pool
    return _PROCESSES


async def off_process(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """`fn(*args, **kwargs)` in a worker process (`fn`, its arguments and its result are
    pickled); if the workers cannot run it (one was killed, none can start), on the offload
    threads instead: the work is never lost to the pool."""
    global _PROCESSES
    try:
        pool = _PROCESSES or await off_loop_shared(_started_processes)
        return await asyncio.get_running_loop().run_in_executor(
            pool, functools.partial(fn, *args, **kwargs))
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
