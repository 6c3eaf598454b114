"""A pending approval gets one reminder in its thread once OPSBOT_REMIND_AFTER has passed."""

from __future__ import annotations

import asyncio

import pytest

from tests.botfixtures import RunningBot, alert_payload
from tests.lab import WebLab

pytestmark = pytest.mark.lab


@pytest.mark.bot_env(OPSBOT_REMIND_AFTER="2")
async def test_a_pending_approval_is_reminded_of_once_in_its_thread(
        running_bot: RunningBot, healthy_web: WebLab) -> None:
    bot = running_bot
    healthy_web.stop_backend()
    await bot.post_alert(alert_payload())
    await bot.wait(lambda: bot.roots() and any("Approve" in m.plain() for m in bot.thread()))
    assert "Still waiting for approval" not in bot.thread_text()
    await bot.wait(lambda: "⏰ Still waiting for approval: start_program on web01" in
                   bot.thread_text(), timeout=20)
    await asyncio.sleep(3)  # more rounds of the sweep: no second reminder
    assert sum("Still waiting for approval" in m.plain() for m in bot.thread()) == 1
    actions = [r["action"] for r in bot.store().audit_records(1)]
    assert actions.count("approval.reminded") == 1
    assert bot.store().approvals_of(1)[0].status == "pending"
    healthy_web.heal()
