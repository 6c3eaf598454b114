"""CPU-bound and blocking work off the event loop, a bounded few at a time.

The loop answers Slack within its 3 seconds and times every step; parsing a host's `nginx -T`
or removing a folder on it would hold every request and every other host's step meanwhile.
Two threads are enough: more would only queue for the interpreter's lock.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

_POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="opsbot-offload")


async def off_loop(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """`fn(*args, **kwargs)` on the offload threads; its exception, if any, is raised here."""
    return await asyncio.get_running_loop().run_in_executor(
        _POOL, functools.partial(fn, *args, **kwargs))
