"""A running opsbot (in this test process) wired to the real lab and the Slack stand-in."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.adapters import slack as slack_adapter
from bot.adapters.store import Store
from bot.config import Settings, load_settings
from bot.edge import HEADER_TIMEOUT
from bot.outbox import Outbox
from bot.server import serve
from tests.fakeslack import FakeSlack, Msg
from tests.lab import free_port
from tests.pacedbot import TEST_PACE
from tests.slacksign import click_body, sign, slash_command_body

ROOT = Path(__file__).resolve().parents[1]
CHANNEL = "C0INCIDENT"
ALERT_TOKEN = "alert-token-for-tests"
SIGNING_SECRET = "signing-secret-for-tests"
APPROVERS = ("U0ALICE", "U0BOB")


def alert_payload(status: str = "firing", *, host: str = "web01", name: str = "NginxBadGateway",
                  group_key: str | None = None, extra_labels: dict[str, str] | None = None,
                  starts_at: str = "2026-11-22T03:00:00.000Z") -> dict[str, Any]:
    """An Alertmanager webhook (version 4) exactly as Alertmanager sends it."""
    labels = {"alertname": name, "host": host, "instance": "http://127.0.0.1/healthcheck",
              "job": "blackbox", "severity": "critical", **(extra_labels or {})}
    ends_at = "0001-01-01T00:00:00Z" if status == "firing" else "2026-11-22T03:10:00.000Z"
    return {
        "receiver": "opsbot", "status": status, "version": "4",
        "groupKey": group_key or f'{{}}:{{alertname="{name}", host="{host}"}}',
        "truncatedAlerts": 0, "externalURL": "http://127.0.0.1:9093",
        "groupLabels": {"alertname": name, "host": host},
        "commonLabels": labels, "commonAnnotations": {"summary": f"nginx answers 502 on {host}"},
        "alerts": [{"status": status, "labels": labels,
                    "annotations": {"summary": f"nginx answers 502 on {host}"},
                    "startsAt": starts_at, "endsAt": ends_at,
                    "generatorURL": "http://127.0.0.1:9090/graph", "fingerprint": "4f2c1a9b0d3e"}],
    }


async def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """The `opsbot` command in a child process, so the bot and the Slack stand-in in this
    process keep serving while it runs."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", *args, env={**os.environ, **env},
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    return subprocess.CompletedProcess(args, proc.returncode or 0, out.decode(), err.decode())


@dataclass
class RunningBot:
    url: str
    settings: Settings
    slack: FakeSlack
    session: aiohttp.ClientSession
    env: dict[str, str] = field(default_factory=dict)
    process: Any = None  # the BotProcess, to restart the bot

    async def restart(self) -> None:
        await self.process.stop()
        await self.process.start()

    def store(self) -> Store:
        return Store(self.settings.db)

    async def post_alert(self, payload: Any, *, token: str | None = ALERT_TOKEN,
                         raw: bytes | None = None) -> tuple[int, dict[str, Any]]:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        body = raw if raw is not None else json.dumps(payload).encode()
        async with self.session.post(f"{self.url}/alerts/alertmanager", data=body,
                                     headers=headers) as resp:
            return resp.status, await resp.json(content_type=None)

    async def slack_request(self, body: bytes, *, timestamp: int | None = None,
                            secret: str = SIGNING_SECRET) -> tuple[int, str]:
        async with self.session.post(f"{self.url}/slack/events", data=body,
                                     headers=sign(secret, body, timestamp)) as resp:
            return resp.status, await resp.text()

    async def slash(self, text: str, user: str = "U0CAROL") -> tuple[int, str]:
        url = self.slack.response_url(channel=CHANNEL, user=user)
        return await self.slack_request(slash_command_body(text, user_id=user, response_url=url))

    async def click(self, msg: Msg, action_id: str, user: str) -> tuple[int, str]:
        url = self.slack.response_url(channel=CHANNEL, user=user, message_ts=msg.ts)
        return await self.slack_request(click_body(msg, action_id, user_id=user,
                                                   response_url=url))

    def roots(self) -> list[Msg]:
        return self.slack.messages(CHANNEL)

    def thread(self, root: Msg | None = None) -> list[Msg]:
        root = root or self.roots()[0]
        return self.slack.thread(CHANNEL, root.ts)

    def thread_text(self, root: Msg | None = None) -> str:
        return "\n".join(m.plain() for m in self.thread(root))

    async def wait(self, predicate: Any, timeout: float = 30) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            await asyncio.sleep(0.1)
        raise AssertionError(f"timed out after {timeout}s; thread so far:\n"
                             + "\n---\n".join(m.plain() for r in self.roots()
                                               for m in [r, *self.thread(r)]))


def bot_env(db: Path, slack_url: str, inventory: Path, known_hosts: Path,
            port: int) -> dict[str, str]:
    return {
        "SLACK_BOT_TOKEN": "xoxb-test-token", "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "SLACK_API_URL": slack_url, "OPSBOT_CHANNEL": CHANNEL,
        "OPSBOT_APPROVERS": ",".join(APPROVERS), "OPSBOT_LISTEN": f"127.0.0.1:{port}",
        "OPSBOT_DB": str(db), "OPSBOT_RUNBOOKS": str(ROOT / "runbooks"),
        "OPSBOT_INVENTORY": str(inventory), "OPSBOT_KNOWN_HOSTS": str(known_hosts),
        "OPSBOT_ALERT_TOKEN": ALERT_TOKEN,
    }


class BotProcess:
    """`opsbot serve` inside this test's event loop; start() and stop() may repeat (restart).
    `slack_pace`: post at Slack's own pace instead of TEST_PACE (see tests/pacedbot.py)."""

    def __init__(self, env: dict[str, str], *, slack_pace: bool = False) -> None:
        self.env = env
        self.task: asyncio.Task[None] | None = None
        self.stop_event = asyncio.Event()
        self.pace = pytest.MonkeyPatch()
        self.slack_pace = slack_pace

    async def start(self) -> Settings:
        settings = load_settings(self.env, serving=True)
        ready, self.stop_event = asyncio.Event(), asyncio.Event()
        if not self.slack_pace:
            self.pace.setattr(slack_adapter, "PACE", TEST_PACE)
        self.task = asyncio.create_task(serve(settings, ready=ready, stop=self.stop_event))
        waiter = asyncio.create_task(ready.wait())
        await asyncio.wait([waiter, self.task], timeout=30, return_when=asyncio.FIRST_COMPLETED)
        try:
            if self.task.done():
                self.task.result()  # raises what stopped the server
            assert ready.is_set(), "opsbot did not start within 30 s"
        except BaseException:
            self.pace.undo()
            raise
        return settings

    async def stop(self, *, flush: bool = True) -> None:
        """Stop as SIGTERM does. `flush=False`, at a test's end: what the outbox still holds
        stays in the store (as when Slack is slow) instead of being sent, at Slack's pace of
        about a post a second, to a stand-in nobody reads any more."""
        if self.task is None:
            return
        try:
            with pytest.MonkeyPatch.context() as patch:
                if not flush:
                    patch.setattr(Outbox, "stop", _stop_unflushed)
                self.stop_event.set()
                await asyncio.wait_for(self.task, 60)
        finally:
            self.task = None
            self.pace.undo()


_outbox_stop = Outbox.stop


async def _stop_unflushed(outbox: Outbox, timeout: float) -> int:
    return await _outbox_stop(outbox, 0.0)


@pytest.fixture
async def running_bot(request: pytest.FixtureRequest, tmp_path: Path, inventory_file: Path,
                      known_hosts_file: Path) -> AsyncIterator[RunningBot]:
    """A serving bot. `@pytest.mark.bot_env(OPSBOT_X="...")` adds or changes settings;
    parametrized indirectly ("thread", "process"), it answers with that OPSBOT_EDGE."""
    edge = {"OPSBOT_EDGE": request.param} if hasattr(request, "param") else {}
    async with serving_bot(request, tmp_path, inventory_file, known_hosts_file, **edge) as bot:
        yield bot


@contextlib.asynccontextmanager
async def serving_bot(request: pytest.FixtureRequest, tmp_path: Path, inventory: Path,
                      known_hosts: Path, **extra: str) -> AsyncIterator[RunningBot]:
    """The Slack stand-in and `opsbot serve` on a free port; settings from `bot_env`, then
    `extra`, then the test's `@pytest.mark.bot_env(...)`."""
    slack = FakeSlack(channels=(CHANNEL,))
    slack_url = await slack.start()
    port = free_port()
    env = {**bot_env(tmp_path / "opsbot.db", slack_url, inventory, known_hosts, port), **extra}
    marker = request.node.get_closest_marker("bot_env")
    if marker:
        env.update(marker.kwargs)
    process = BotProcess(env, slack_pace=request.node.get_closest_marker("slack_pace") is not None)
    settings = await process.start()
    # idle connections are dropped before the server's keep-alive timeout would close them:
    # a request sent on one the server is closing at that moment gets a reset
    connector = aiohttp.TCPConnector(keepalive_timeout=HEADER_TIMEOUT / 2)
    try:
        async with aiohttp.ClientSession(connector=connector) as session:
            bot = RunningBot(f"http://127.0.0.1:{port}", settings, slack, session, env)
            bot.process = process
            yield bot
    finally:  # a failed test's bot stops too (and its Slack pace is restored)
        await process.stop(flush=False)
        await slack.stop()
