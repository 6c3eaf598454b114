"""A serving opsbot (and its Slack stand-in) on an event loop of its own thread, for
synchronous clients such as schemathesis and hypothesis tests that block while they send."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bot.config import load_settings
from bot.server import serve
from tests.botfixtures import ROOT, bot_env
from tests.fakeslack import FakeSlack
from tests.lab import free_port

CHANNEL = "C0INCIDENT"


@dataclass
class ThreadBot:
    url: str
    db: Path
    requests: int = 0  # sent by test_openapi_fuzz, for the record


@pytest.fixture(scope="session")
def thread_bot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadBot]:
    tmp = tmp_path_factory.mktemp("threadbot")
    # the database in memory-backed files when there are: fuzzing writes each request
    shm = Path("/dev/shm")
    db_dir = Path(tempfile.mkdtemp(prefix="opsbot-", dir=shm if shm.is_dir() else tmp))
    inventory = tmp / "inventory.yaml"
    inventory.write_text("all:\n  hosts:\n    edge01:\n      ansible_host: 192.0.2.10\n")
    (tmp / "known_hosts").write_text("")
    port = free_port()
    loop = asyncio.new_event_loop()
    started = threading.Event()
    stop: list[asyncio.Event] = []
    failure: list[BaseException] = []

    async def main() -> None:
        slack = FakeSlack(channels=(CHANNEL,))
        env = bot_env(db_dir / "opsbot.db", await slack.start(), inventory, tmp / "known_hosts",
                      port)
        env["OPSBOT_RUNBOOKS"] = str(ROOT / "runbooks")
        ready = asyncio.Event()
        stop.append(asyncio.Event())
        server = asyncio.create_task(serve(load_settings(env, serving=True), ready=ready,
                                           stop=stop[0]))
        waiter = asyncio.create_task(ready.wait())
        await asyncio.wait([server, waiter], return_when=asyncio.FIRST_COMPLETED)
        started.set()
        try:
            await server
        finally:
            waiter.cancel()
            await slack.stop()

    def run() -> None:
        try:
            loop.run_until_complete(main())
        except BaseException as exc:  # reported to the test below
            failure.append(exc)
            started.set()

    thread = threading.Thread(target=run, name="threadbot", daemon=True)
    thread.start()
    assert started.wait(60) and not failure, f"opsbot did not start: {failure}"
    yield ThreadBot(f"http://127.0.0.1:{port}", db_dir / "opsbot.db")
    loop.call_soon_threadsafe(stop[0].set)
    thread.join(90)
    loop.close()
    shutil.rmtree(db_dir, ignore_errors=True)
