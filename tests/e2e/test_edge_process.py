"""The edge process (OPSBOT_EDGE=process): `opsbot serve` (the core) killed while its edge
keeps answering and recording, the work done once a core is back; the edge killed and started
again by the core. Both are real processes; Slack is the stand-in, signed as Slack signs.
(A burst answered while the core's loop is held: tests/e2e/test_ack_under_load.py.)"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from bot.adapters.store import Store
from bot.edgeproc import EDGE_LEAD
from tests.botfixtures import ALERT_TOKEN, CHANNEL, SIGNING_SECRET, alert_payload, bot_env
from tests.e2e.test_ack_under_load import work_rows
from tests.e2e.test_reliability_kill import Serve, edge_processes, is_edge, no_bot_left
from tests.fakeslack import FakeSlack
from tests.lab import free_port
from tests.slacksign import block_actions_body, sign, slash_command_body

__all__ = ["no_bot_left"]  # the fixture that stops what a failed test left


@pytest.fixture
async def core(tmp_path: Path) -> AsyncIterator[tuple[Serve, FakeSlack]]:
    """`opsbot serve` with OPSBOT_EDGE=process as a child process; one host that is never
    dialled (TEST-NET), U0ALICE an operator."""
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text("all:\n  hosts:\n    edge01:\n      ansible_host: 192.0.2.10\n")
    (tmp_path / "known_hosts").write_text("")
    slack = FakeSlack(channels=(CHANNEL,))
    env = {**bot_env(tmp_path / "opsbot.db", await slack.start(), inventory,
                     tmp_path / "known_hosts", free_port()),
           "OPSBOT_OPERATORS": "U0ALICE", "OPSBOT_EDGE": "process"}
    yield Serve(env, tmp_path / "serve.log"), slack
    await slack.stop()


async def signed(http: aiohttp.ClientSession, url: str, body: bytes) -> tuple[int, str]:
    async with http.post(f"{url}/slack/events", data=body,
                         headers=sign(SIGNING_SECRET, body)) as resp:
        return resp.status, await resp.text()


def nice(pid: int) -> int:
    """A process's (its main thread's) nice, as the kernel has it."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])


async def until(check: object, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.1)


async def test_the_edge_answers_and_records_while_the_core_is_killed(
        core: tuple[Serve, FakeSlack]) -> None:
    bot, slack = core
    respond = slack.response_url(channel=CHANNEL, user="U0ALICE")
    click = block_actions_body("opsbot.approve", "no-such-token", "U0ALICE", CHANNEL,
                               "1700000000.000100", response_url=respond)
    command = slash_command_body("incidents", "U0ALICE", response_url=respond)
    async with aiohttp.ClientSession() as http:
        await bot.start(http)
        edges = edge_processes(bot.proc.pid if bot.proc else 0)
        assert len(edges) == 1
        await bot.kill9()
        # the core is gone; its edge answers: the webhook and the click on disk, the command
        # recorded, a replayed click refused, help answered at once
        async with http.post(f"{bot.url}/alerts/alertmanager",
                             data=json.dumps(alert_payload(host="elsewhere01")),
                             headers={"Authorization": f"Bearer {ALERT_TOKEN}"}) as resp:
            assert resp.status == 200 and (await resp.json())["status"] == "accepted"
        assert await signed(http, bot.url, click) == (200, "")
        status, text = await signed(http, bot.url, click)
        assert status == 401 and "replay" in text
        status, text = await signed(http, bot.url, command)
        assert status == 200 and "opsbot is restarting" in json.loads(text)["text"]
        status, text = await signed(http, bot.url, slash_command_body("help", "U0BOB"))
        assert status == 200 and "incident response" in json.loads(text)["text"]
        async with http.get(f"{bot.url}/healthz") as resp:
            assert resp.status == 503  # answering, but nothing is done meanwhile
        db = Path(bot.env["OPSBOT_DB"])
        assert work_rows(db) == [("alert", "pending"), ("click", "pending"), ("command", "pending")]
        assert not slack.responses
        # a new core takes the listening socket over from that edge, and does the work
        await bot.start(http)
        await until(lambda: "pending" not in {status for _, status in work_rows(db)}
                    and slack.responses)
        assert is_edge(edges[0]) is False  # the old edge ended once taken over
        # the command is answered where it was asked, and the click (for no approval)
        await until(lambda: len(slack.responses) == 2)
        click_answer, answer = sorted((r.plain() for r in slack.responses), reverse=True)
        assert click_answer.startswith("This approval is unknown")
        assert answer.startswith("(after a restart) • *INC-1* open")
        assert answer.endswith("nginx answers 502 on elsewhere01")
        assert work_rows(db) == [("alert", "done"), ("click", "done"), ("command", "done")]
        store = Store(str(db))
        assert [i.title for i in store.list_incidents()] == ["nginx answers 502 on elsewhere01"]
        assert await bot.stop() == 0
    log = (db.parent / "serve.log").read_text()
    assert "the core (pid" in log and "Traceback" not in log


async def test_a_killed_edge_is_started_again_by_the_core(
        core: tuple[Serve, FakeSlack]) -> None:
    bot, slack = core
    respond = slack.response_url(channel=CHANNEL, user="U0ALICE")
    async with aiohttp.ClientSession() as http:
        await bot.start(http)
        assert bot.proc is not None
        first = edge_processes(bot.proc.pid)
        assert len(first) == 1
        # the edge is ahead of the core's loop: a core goes to an answer first
        assert nice(bot.proc.pid) - nice(first[0]) == EDGE_LEAD
        os.kill(first[0], signal.SIGKILL)
        await until(lambda: edge_processes(bot.proc.pid) not in ([], first))  # type: ignore[union-attr]
        # answered by the new edge: connections waited in the core's listening socket
        status, text = await signed(http, bot.url, slash_command_body("help", "U0ALICE"))
        assert status == 200 and "incident response" in json.loads(text)["text"]
        click = block_actions_body("opsbot.reject", "no-such-token", "U0ALICE", CHANNEL,
                                   "1700000000.000200", response_url=respond)
        assert await signed(http, bot.url, click) == (200, "")
        await until(lambda: work_rows(Path(bot.env["OPSBOT_DB"])) == [("click", "done")])
        await until(lambda: slack.responses)
        assert "approval is unknown" in slack.responses[0].plain()
        assert bot.proc.returncode is None
        assert await bot.stop() == 0
    log = Path(bot.log).read_text()
    assert "the edge process ended" in log and "starting it again" in log
