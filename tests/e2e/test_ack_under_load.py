"""Slack's requests are answered while the store's writer is busy with a run.

The store writes a run's steps one after another on its worker thread; an accepted command or
click is written (its replay check, its work row) on a lane of its own, whose writes take the
database's write lock first. Here the worker is held busy with a run's writes queued behind
it: signed slash commands (one reading the store) and a signed click are answered, and the
click is on disk as work, before any of those writes lands. No timing thresholds (those are
in bench/).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from bot.adapters.slack import SlackInbound
from bot.adapters.store import Store
from bot.app import Runtime, build
from bot.config import load_settings
from bot.server import web_app
from tests.botfixtures import CHANNEL, ROOT, SIGNING_SECRET, bot_env
from tests.fakeslack import FakeSlack
from tests.lab import free_port
from tests.slacksign import block_actions_body, sign, slash_command_body


@dataclass
class Served:
    url: str
    rt: Runtime
    slack: FakeSlack
    db: Path


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    """opsbot's server with its Runtime at hand (the store's worker can be held busy)."""
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text("all:\n  hosts:\n    edge01:\n      ansible_host: 192.0.2.10\n")
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")
    slack = FakeSlack(channels=(CHANNEL,))
    slack_url = await slack.start()
    port = free_port()
    env = {**bot_env(tmp_path / "opsbot.db", slack_url, inventory, known_hosts, port),
           "OPSBOT_RUNBOOKS": str(ROOT / "runbooks"), "OPSBOT_OPERATORS": "U0ALICE"}
    settings = load_settings(env, serving=True)
    rt = build(settings)
    runner = web.AppRunner(web_app(rt, SlackInbound(rt.bot, settings, rt.client)))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield Served(f"http://127.0.0.1:{port}", rt, slack, tmp_path / "opsbot.db")
    finally:
        await runner.cleanup()
        await rt.close(work_timeout=10)
        await slack.stop()


def audited(db: Path, action: str) -> int:
    store = Store(db)
    try:
        return sum(1 for r in store.audit_records() if r["action"] == action)
    finally:
        store.close()


def work_rows(db: Path) -> list[tuple[str, str]]:
    store = Store(db)
    try:
        return [(r["kind"], r["status"]) for r in
                store.db.query("SELECT kind, status FROM work ORDER BY id")]
    finally:
        store.close()


async def test_command_and_click_are_acked_while_a_run_keeps_the_store_busy(
        served: Served) -> None:
    store = served.rt.store
    release = threading.Event()
    # the store's worker is busy (a run's write in progress) and a run's next writes queue
    # behind it, as a 50-host diagnosis's step writes do
    busy = asyncio.ensure_future(store.call(release.wait, 60))
    queued = [asyncio.ensure_future(store.audit("step.finished", "opsbot", None, step=i))
              for i in range(20)]
    respond = served.slack.response_url(channel=CHANNEL, user="U0ALICE")
    try:
        async with aiohttp.ClientSession() as http:
            async def post(body: bytes) -> tuple[int, str]:
                async with http.post(f"{served.url}/slack/events", data=body,
                                     headers=sign(SIGNING_SECRET, body)) as resp:
                    return resp.status, await resp.text()

            help_status, help_text = await asyncio.wait_for(
                post(slash_command_body("help", "U0ALICE", response_url=respond)), 30)
            listed = await asyncio.wait_for(
                post(slash_command_body("incidents", "U0ALICE", response_url=respond)), 30)
            click_status, _ = await asyncio.wait_for(post(block_actions_body(
                "opsbot.approve", "no-such-token", "U0ALICE", CHANNEL, "1700000000.000100",
                response_url=respond)), 30)
            # answered, and the click is stored as work, while none of the run's writes landed
            assert (help_status, click_status) == (200, 200)
            assert "incident response" in help_text
            assert listed[0] == 200 and "No incidents." in listed[1]  # read on the lane
            assert not busy.done() and not any(q.done() for q in queued)
            assert audited(served.db, "step.finished") == 0
            assert work_rows(served.db) == [("click", "pending")]
    finally:
        release.set()
    await asyncio.wait_for(asyncio.gather(busy, *queued), 30)
    assert audited(served.db, "step.finished") == 20
    # then the click is done: an unknown approval is said to the one who clicked
    for _ in range(300):
        if work_rows(served.db) == [("click", "done")] and served.slack.responses:
            break
        await asyncio.sleep(0.1)
    assert work_rows(served.db) == [("click", "done")]
    assert any("unknown" in r.plain() for r in served.slack.responses)
