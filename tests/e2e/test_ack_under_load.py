"""Slack's and Alertmanager's requests are answered while the bot is busy with a run.

The store writes a run's steps one after another on its worker thread; an accepted command or
click is written (its replay check, its work row) on a lane of its own, whose writes take the
database's write lock first. Here the worker is held busy with a run's writes queued behind
it: signed slash commands (one reading the store) and a signed click are answered, and the
click is on disk as work, before any of those writes lands.

The HTTP server answers on a thread and event loop of its own (bot.edge.ServerThread): here
the bot's loop is held outright, and a command, a click and an alert webhook sent from another
thread are answered all the same, the click and the webhook on disk; what they start runs once
the bot's loop is free. No timing thresholds (those are in bench/).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import urllib.request
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
from tests.botfixtures import (
    ALERT_TOKEN,
    CHANNEL,
    ROOT,
    SIGNING_SECRET,
    BotProcess,
    alert_payload,
    bot_env,
)
from tests.fakeslack import FakeSlack
from tests.lab import free_port
from tests.slacksign import block_actions_body, sign, slash_command_body


@dataclass
class Served:
    url: str
    rt: Runtime
    slack: FakeSlack
    db: Path


async def bot_under_test(tmp_path: Path) -> tuple[FakeSlack, int, dict[str, str]]:
    """A started Slack stand-in, a free port and the env of a bot whose one host (TEST-NET) is
    never dialled; U0ALICE is an operator."""
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text("all:\n  hosts:\n    edge01:\n      ansible_host: 192.0.2.10\n")
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")
    slack = FakeSlack(channels=(CHANNEL,))
    port = free_port()
    env = {**bot_env(tmp_path / "opsbot.db", await slack.start(), inventory, known_hosts, port),
           "OPSBOT_OPERATORS": "U0ALICE"}
    return slack, port, env


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    """opsbot's server with its Runtime at hand (the store's worker can be held busy)."""
    slack, port, env = await bot_under_test(tmp_path)
    env["OPSBOT_RUNBOOKS"] = str(ROOT / "runbooks")
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


@dataclass
class Serving:
    url: str
    slack: FakeSlack
    db: Path


@pytest.fixture(params=["thread", "process"])
async def serving(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Serving]:
    """`opsbot serve`, the bot on this test's loop; its answers on a thread of its own, or in
    a process of its own (OPSBOT_EDGE)."""
    slack, port, env = await bot_under_test(tmp_path)
    process = BotProcess({**env, "OPSBOT_EDGE": request.param})
    await process.start()
    try:
        yield Serving(f"http://127.0.0.1:{port}", slack, tmp_path / "opsbot.db")
    finally:
        await process.stop()
        await slack.stop()


def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
    """A blocking POST, from a thread of its own."""
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=30) as resp:  # noqa: S310 (loopback)
        return resp.status, resp.read().decode()


def incident_titles(db: Path) -> list[str]:
    store = Store(db)
    try:
        return [r["title"] for r in store.db.query("SELECT title FROM incidents")]
    finally:
        store.close()


def webhook_rows(db: Path) -> int:
    store = Store(db)
    try:
        return len(store.db.query("SELECT id FROM webhooks"))
    finally:
        store.close()


async def test_requests_are_answered_while_the_bots_loop_is_held(serving: Serving) -> None:
    respond = serving.slack.response_url(channel=CHANNEL, user="U0ALICE")
    slack_url = f"{serving.url}/slack/events"
    help_body = slash_command_body("help", "U0ALICE", response_url=respond)
    click = block_actions_body("opsbot.approve", "no-such-token", "U0ALICE", CHANNEL,
                               "1700000000.000100", response_url=respond)
    alert = json.dumps(alert_payload(host="elsewhere01")).encode()
    seen: dict[str, object] = {}
    done = threading.Event()

    def send() -> None:  # Slack and Alertmanager, while the bot's loop is held
        try:
            seen["answers"] = [
                post(slack_url, help_body, sign(SIGNING_SECRET, help_body)),
                post(slack_url, click, sign(SIGNING_SECRET, click)),
                post(f"{serving.url}/alerts/alertmanager", alert,
                     {"Authorization": f"Bearer {ALERT_TOKEN}",
                      "Content-Type": "application/json"})]
            # on disk before the answers, and nothing done yet: that needs the bot's loop
            seen["stored"] = (work_rows(serving.db), webhook_rows(serving.db),
                              incident_titles(serving.db))
        except BaseException as exc:  # reported below
            seen["failure"] = exc
        finally:
            done.set()

    def hold() -> None:  # the bot's loop (this test's) does nothing else meanwhile
        seen["released by the sender"] = done.wait(60)

    threading.Thread(target=send).start()
    asyncio.get_running_loop().call_soon(hold)
    await asyncio.sleep(0)  # `hold` runs first
    assert seen.get("failure") is None and seen["released by the sender"]
    answers = seen["answers"]
    assert isinstance(answers, list)
    assert [status for status, _ in answers] == [200, 200, 200]
    assert "incident response" in answers[0][1]
    assert json.loads(answers[2][1])["status"] == "accepted"
    assert seen["stored"] == ([("click", "pending"), ("alert", "pending")], 1, [])
    # once the loop is free, what they started runs: the click is done and answered, the
    # webhook opens its incident
    for _ in range(300):
        if incident_titles(serving.db) and work_rows(serving.db)[0] == ("click", "done") and \
                serving.slack.responses:
            break
        await asyncio.sleep(0.1)
    assert incident_titles(serving.db) == ["nginx answers 502 on elsewhere01"]
    assert work_rows(serving.db)[0] == ("click", "done")
    assert any("unknown" in r.plain() for r in serving.slack.responses)


async def test_the_server_shortens_the_lock_switch_interval_while_it_serves(
        tmp_path: Path) -> None:
    """The edge's thread waits for the interpreter's lock while the loop's thread is busy: the
    server asks it to change threads every millisecond while it serves, and gives the process
    its old interval back when it stops (tests start many servers in one process)."""
    import sys

    from bot.server import SWITCH_INTERVAL

    before = sys.getswitchinterval()
    assert before != SWITCH_INTERVAL
    slack, _port, env = await bot_under_test(tmp_path)
    process = BotProcess(env)
    await process.start()
    try:
        assert sys.getswitchinterval() == pytest.approx(SWITCH_INTERVAL)
    finally:
        await process.stop()
        await slack.stop()
    assert sys.getswitchinterval() == pytest.approx(before)


async def test_the_server_makes_full_collections_rarer_while_it_serves(tmp_path: Path) -> None:
    """A full collection holds the interpreter's lock while it walks everything made since the
    server was ready, and every answer in flight waits: while serving, the collector's oldest
    generation is collected at most once per FULL_COLLECTION_EVERY collections of the middle
    one, the young ones as before; the process's own thresholds come back at the stop."""
    import gc

    from bot.server import FULL_COLLECTION_EVERY

    before = gc.get_threshold()
    assert before[2] < FULL_COLLECTION_EVERY
    slack, _port, env = await bot_under_test(tmp_path)
    process = BotProcess(env)
    await process.start()
    try:
        assert gc.get_threshold() == (before[0], before[1], FULL_COLLECTION_EVERY)
    finally:
        await process.stop()
        await slack.stop()
    assert gc.get_threshold() == before


def thread_nice(native_id: int) -> int:
    """A thread's nice as the kernel has it (/proc/self/task/TID/stat, field 19)."""
    stat = Path(f"/proc/self/task/{native_id}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[16])


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread nice is Linux's")
async def test_batch_threads_run_below_the_answers_and_the_loop(serving: Serving) -> None:
    """The threads that answer (the HTTP server's) and the bot's loop keep their priority; the
    offload threads (batch work: parsing, rmtree, the docker steps' threads they start) run
    OPSBOT_BATCH_NICE (10) steps of nice below them, so that on a busy host a core goes to an
    answer first. The store's threads keep it too: a run's transaction holds the write lock
    that the request lane waits for."""
    from bot.offload import own_nice

    base = own_nice()  # this test's loop is the bot's loop
    threads = {t.name: t.native_id for t in threading.enumerate() if t.native_id is not None}
    assert thread_nice(threads["opsbot-http"]) == base
    assert thread_nice(threading.get_native_id()) == base
    offload = [tid for name, tid in threads.items() if name.startswith("opsbot-offload")]
    assert len(offload) == 2
    assert {thread_nice(tid) for tid in offload} == {min(19, base + 10)}
    stores = [thread_nice(t.native_id) for t in threading.enumerate()
              if t.name.startswith("store") and t.native_id is not None]
    assert len(stores) >= 3 and set(stores) == {base}  # runs' store, request lane, intake


async def test_the_loops_executor_threads_are_started_before_any_work(serving: Serving) -> None:
    """asyncssh hands each connection's set-up to the loop's default executor; a thread that
    executor starts on demand holds the loop until it first runs. The server starts them all
    (at the loop's priority) before it serves."""
    from bot.offload import own_nice

    started = [t for t in threading.enumerate() if t.name.startswith("opsbot-loop")]
    assert len(started) == min(32, (os.cpu_count() or 1) + 4)
    assert {thread_nice(t.native_id or 0) for t in started} == {own_nice()}
    ran_on = await asyncio.get_running_loop().run_in_executor(None, threading.current_thread)
    assert ran_on in started
