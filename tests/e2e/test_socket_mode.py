"""Socket Mode (SLACK_APP_TOKEN set): the same slash command and approval click arrive over the
websocket Slack opens with apps.connections.open, instead of signed HTTP requests."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import parse_qs

import aiohttp
import pytest

from tests.botfixtures import CHANNEL, BotProcess, RunningBot, alert_payload, bot_env
from tests.fakeslack import FakeSlack
from tests.lab import WebLab, free_port
from tests.slacksign import click_body, slash_command_body

pytestmark = pytest.mark.lab


def form(body: bytes) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(body.decode()).items()}


@pytest.mark.parametrize("edge", ["thread", "process"])  # OPSBOT_EDGE: HTTP alerts' answers
async def test_socket_mode_command_and_click(tmp_path: Path, healthy_web: WebLab,
                                             inventory_file: Path, known_hosts_file: Path,
                                             edge: str) -> None:
    slack = FakeSlack(channels=(CHANNEL,))
    port = free_port()
    env = bot_env(tmp_path / "opsbot.db", await slack.start(), inventory_file, known_hosts_file,
                  port)
    env.pop("SLACK_SIGNING_SECRET")
    env["SLACK_APP_TOKEN"] = slack.app_token
    env["OPSBOT_EDGE"] = edge
    process = BotProcess(env)
    settings = await process.start()
    try:
        async with aiohttp.ClientSession() as http:
            bot = RunningBot(f"http://127.0.0.1:{port}", settings, slack, http, env, process)
            envelope = await slack.socket_send("slash_commands",
                                               form(slash_command_body("help")))
            ack = await slack.wait_for(lambda fake: fake.socket_acks.get(envelope), timeout=10)
            assert "timeline <INC-n>" in json.dumps(ack.get("payload", {}))
            async with http.post(f"{bot.url}/slack/events", data=b"x") as resp:
                assert resp.status == 404  # nothing is served over HTTP in Socket Mode

            healthy_web.stop_backend()
            await bot.post_alert(alert_payload())
            approval = await bot.wait(lambda: next(
                (m for m in bot.thread() if "[Approve](opsbot.approve)" in m.plain()), None)
                if bot.roots() else None)
            click = json.loads(form(click_body(approval, "opsbot.approve", "U0BOB"))["payload"])
            envelope = await slack.socket_send("interactive", click)
            await slack.wait_for(lambda fake: envelope in fake.socket_acks, timeout=10)
            await bot.wait(lambda: "verified" in bot.roots()[0].plain(), timeout=40)
            assert healthy_web.proxy_status() == 200
            assert bot.store().approvals_of(1)[0].decided_by == "U0BOB"
    finally:
        await process.stop(flush=False)
        await slack.stop()
