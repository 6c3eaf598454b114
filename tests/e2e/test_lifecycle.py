"""An incident's life as its root message shows it: nothing waits forever, and a fixed host's next
fault is a new incident."""

from __future__ import annotations

import pytest

from tests.botfixtures import RunningBot, alert_payload, run_cli
from tests.lab import WebLab

pytestmark = pytest.mark.lab


@pytest.mark.bot_env(OPSBOT_CLOSE_AFTER="20")
async def test_nothing_waits_forever_and_a_new_fault_is_a_new_incident(
        running_bot: RunningBot, healthy_web: WebLab) -> None:
    bot = running_bot
    # an alert for a host opsbot does not know: it says there is nothing to do (and closes
    # OPSBOT_CLOSE_AFTER later: checked at the end, the rest goes on meanwhile)
    await bot.post_alert(alert_payload(host="nosuchhost"))
    await bot.wait(lambda: bot.roots() and "Nothing for opsbot to run" in bot.thread_text())
    await bot.wait(lambda: "open — not diagnosed" in bot.roots()[0].plain())

    # a fix that verified: mitigated, shown in the root message
    healthy_web.stop_backend()
    done = await run_cli(bot.env, "run", "nginx-502", "web01", "--yes")
    assert done.returncode == 0 and "INC-2: verified" in done.stdout, done.stderr
    await bot.wait(lambda: len(bot.roots()) == 2
                   and "mitigated" in bot.roots()[1].plain())
    assert bot.store().get_incident(2).state == "mitigated"

    # another fault on that host: a new incident, not the mitigated one
    healthy_web.permission_denied()
    done = await run_cli(bot.env, "run", "nginx-502", "web01")
    assert "INC-3" in done.stdout, done.stdout + done.stderr
    await bot.wait(lambda: len(bot.roots()) == 3)
    assert "a new incident, as this one's fix was verified" in bot.thread_text(bot.roots()[1])
    assert bot.store().get_incident(3).cause == "permission_denied"
    await bot.wait(lambda: "awaiting approval" in bot.roots()[2].plain())

    # the mitigated one resolves by itself; the one awaiting a decision stays
    await bot.wait(lambda: bot.store().get_incident(2).status == "resolved", timeout=40)
    await bot.wait(lambda: "🟢" in bot.roots()[1].plain() and "resolved" in bot.roots()[1].plain())
    assert bot.store().get_incident(2).state == "resolved"
    assert bot.store().get_incident(3).status == "open"

    # the one with nothing to do closed by itself, without action
    await bot.wait(lambda: "closed without action" in bot.roots()[0].plain(), timeout=40)
    first = bot.store().get_incident(1)
    assert first.status == "resolved" and first.state == "closed"
    assert "Closed: nothing to do" in bot.thread_text(bot.roots()[0])
