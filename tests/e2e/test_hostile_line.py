"""While a step prints long hostile lines, the bot keeps answering: redaction is linear and runs
off the event loop."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.botfixtures import RunningBot, alert_payload

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.bot_env(OPSBOT_RUNBOOKS=str(ROOT / "tests/data/runbooks"))
async def test_slash_acks_and_healthz_answer_while_a_step_prints_hostile_lines(
        running_bot: RunningBot) -> None:
    bot = running_bot
    await bot.post_alert(alert_payload(name="HostileLine"))
    slowest = 0.0

    def done() -> bool:
        return any("(`hostile_output`)" in m.plain() and "running" not in m.plain()
                   for m in bot.thread()) if bot.roots() else False

    deadline = time.monotonic() + 60
    while not done():
        assert time.monotonic() < deadline, "the step did not finish"
        started = time.monotonic()
        async with bot.session.get(f"{bot.url}/healthz") as resp:
            assert resp.status == 200
        status, text = await bot.slash("help")
        assert status == 200 and "run" in text
        slowest = max(slowest, time.monotonic() - started)
        await asyncio.sleep(0.05)
    assert slowest < 1.0, f"the bot stalled for {slowest:.2f}s"
    step = bot.store().steps_of(1)[0]
    assert step.output_bytes == 64 * (32_000 + len(" password=hunter22\n"))
    assert "hunter22" not in step.excerpt and "password=[REDACTED]" in step.excerpt
