"""The acceptance path, as a new user would walk it: `opsbot serve` as its own process, the
contract's environment pointing at the Slack stand-in, a real blackbox probe + Prometheus +
Alertmanager firing on nginx's real 502, then `opsbot run … --yes` and `opsbot export`."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from bot.config import load_settings
from tests.botfixtures import ALERT_TOKEN, CHANNEL, RunningBot, bot_env, run_cli
from tests.fakeslack import FakeSlack
from tests.lab import WebLab, free_port

pytestmark = pytest.mark.lab


async def test_alert_to_fixed_incident_as_a_new_user(
        tmp_path: Path, healthy_web: WebLab, inventory_file: Path, known_hosts_file: Path,
        alerting_factory) -> None:  # type: ignore[no-untyped-def]
    slack = FakeSlack(channels=(CHANNEL,))
    slack_url = await slack.start()
    port = free_port()
    env = {**os.environ, **bot_env(tmp_path / "opsbot.db", slack_url, inventory_file,
                                   known_hosts_file, port)}
    log = (tmp_path / "serve.log").open("w")
    serve = await asyncio.create_subprocess_exec(sys.executable, "-m", "bot", "serve", env=env,
                                                 stdout=log, stderr=log)
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(100):
                try:
                    async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.1)
            else:
                raise AssertionError("opsbot serve did not start:\n"
                                     + (tmp_path / "serve.log").read_text())
        bot = RunningBot(f"http://127.0.0.1:{port}", load_settings(env), slack, http, env)
        alerting_factory(f"{bot.url}/alerts/alertmanager", ALERT_TOKEN)
        await asyncio.to_thread(healthy_web.stop_backend)
        broke_at = time.monotonic()

        def thread_text() -> str:
            return bot.thread_text() if bot.roots() else ""

        await bot.wait(lambda: "[Approve](opsbot.approve)" in thread_text(), 60)
        took = time.monotonic() - broke_at
        roots = slack.messages(CHANNEL)
        assert len(roots) == 1 and "INC-1" in roots[0].plain()
        text = thread_text()
        for step in ("healthcheck", "proxy_check", "listening_ports", "supervisorctl_status",
                     "nginx_error_log", "nginx_config_test", "memory", "kernel_log", "disk",
                     "app_logs"):
            assert f"(`{step}`) on `web01`" in text
        assert "Likely cause on `web01`: *upstream_down*" in text
        assert "connect() failed (111: Connection refused)" in text
        assert "[Reject](opsbot.reject)" in text
        # the alert pipeline adds a few seconds of its own (scrape, rule, group_wait)
        assert took < 30 + 10, f"took {took:.1f}s from the fault to the buttons"

        done = await run_cli(env, "run", "nginx-502", "web01", "--yes")
        assert done.returncode == 0, done.stderr
        assert "INC-1: verified" in done.stdout
        assert healthy_web.proxy_status() == 200
        await bot.wait(lambda: "(`verify_proxy`) on `web01` — *ok*" in thread_text(), 15)
        root = slack.messages(CHANNEL)[0].plain()  # verified, or already resolved by the alert
        assert "approved by local:" in root and ("verified" in root or "resolved" in root)
        assert len(slack.messages(CHANNEL)) == 1

        # Alertmanager sends the resolution once the probe sees 200 again
        await bot.wait(lambda: "resolved" in slack.messages(CHANNEL)[0].plain(), 60)

        done = await run_cli(env, "export", "INC-1", "--format", "md")
        assert done.returncode == 0, done.stderr
        md = done.stdout
        assert "NginxBadGateway" in md and "| firing |" in md and "| resolved |" in md
        assert "$ supervisorctl -c" in md and "approved by local:" in md
        assert "### `verify_proxy` on web01 — ok" in md
        done = await run_cli(env, "audit", "verify")
        assert done.returncode == 0 and "chain intact" in done.stdout
    finally:
        serve.terminate()
        await asyncio.wait_for(serve.wait(), 30)
        log.close()
        await slack.stop()
    assert serve.returncode == 0, (tmp_path / "serve.log").read_text()
