"""A serving opsbot without the lab: the Slack stand-in, the shipped runbooks and an inventory
whose one host is never reached. For tests of what arrives at the bot's edge (payloads,
signatures, hostile input), where nothing needs to run on a host."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.botfixtures import ROOT, BotProcess, RunningBot, bot_env
from tests.fakeslack import FakeSlack
from tests.lab import free_port

CHANNEL = "C0INCIDENT"


@pytest.fixture
async def light_bot(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[RunningBot]:
    """`@pytest.mark.bot_env(...)` adds or changes settings, as for `running_bot`."""
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text("all:\n  hosts:\n    edge01:\n      ansible_host: 192.0.2.10\n")
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")
    slack = FakeSlack(channels=(CHANNEL,))
    slack_url = await slack.start()
    port = free_port()
    env = bot_env(tmp_path / "opsbot.db", slack_url, inventory, known_hosts, port)
    env["OPSBOT_RUNBOOKS"] = str(ROOT / "runbooks")
    marker = request.node.get_closest_marker("bot_env")
    if marker:
        env.update(marker.kwargs)
    process = BotProcess(env)
    settings = await process.start()
    async with aiohttp.ClientSession() as session:
        bot = RunningBot(f"http://127.0.0.1:{port}", settings, slack, session, env)
        bot.process = process
        yield bot
    await process.stop()
    await slack.stop()
