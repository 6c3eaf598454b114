"""Slack down during an incident: the thread appears afterwards, every message once and in order.

Faults are real on loopback: the Slack stand-in answers 503 (as a load balancer in front of a
broken Slack does) or 429, stops listening, or does a post and drops the connection before the
answer. Outage lengths are kept short for the suite; docs/reliability.md has a one-minute run
(`OPSBOT_TEST_OUTAGE=60`).
"""

from __future__ import annotations

import asyncio
import os
import re

import pytest

from tests.botfixtures import CHANNEL, RunningBot, alert_payload
from tests.lab import WebLab

pytestmark = pytest.mark.lab

OUTAGE = float(os.environ.get("OPSBOT_TEST_OUTAGE", "6"))


def phase(bot: RunningBot) -> str | None:
    rows = list(bot.store().db.query("SELECT phase FROM incidents WHERE id = 1"))
    return rows[0]["phase"] if rows else None


def outbox(bot: RunningBot) -> dict[str, int]:
    rows = bot.store().db.query("SELECT status, count(*) AS n FROM outbox GROUP BY status")
    return {r["status"]: r["n"] for r in rows}


def assert_thread_whole_and_in_order(bot: RunningBot) -> None:
    """One root; every stored message exactly once in the thread, in the order it was first
    queued; each in its latest state."""
    store = bot.store()
    assert len(bot.roots()) == 1
    root = bot.roots()[0]
    thread = bot.thread(root)
    posted = list(store.db.query(
        "SELECT m.ref, m.ts, min(o.id) AS first FROM messages m JOIN outbox o ON "
        "o.incident_id = m.incident_id AND o.key = m.ref GROUP BY m.ref ORDER BY first"))
    # uploaded files (the run's step outputs) are shared into the thread by files.upload
    messages = [m for m in thread if not m.files]
    assert [m.ts for m in messages] == [p["ts"] for p in posted], "thread order != queue order"
    assert len({m.ts for m in thread}) == len(thread)
    # the run's live progress message shows every step finished (the latest state won)
    assert all(s.status != "running" for s in store.steps_of(1))
    progress = [m.plain() for m in messages if "host(s) done" in m.plain()]
    assert progress and all(": finished" in text.splitlines()[0] for text in progress), progress
    # metadata marks every post: no two messages carry the same outbox row
    ids = [m.metadata["event_payload"]["outbox_id"] for m in [root, *thread] if m.metadata]
    assert len(ids) == len(set(ids)) == len(messages) + 1


async def wait_drained(bot: RunningBot, timeout: float = 60) -> None:
    await bot.wait(lambda: outbox(bot).get("pending", 0) == 0 and outbox(bot).get("sent"),
                   timeout=timeout)


@pytest.mark.parametrize("mode", ["503", "refuse"])
async def test_slack_down_during_an_incident_loses_and_doubles_nothing(
        running_bot: RunningBot, healthy_web: WebLab, mode: str) -> None:
    bot = running_bot
    healthy_web.stop_backend()
    # Slack goes down just as the alert comes: the root message cannot even be posted
    if mode == "503":
        bot.slack.outage(OUTAGE, "503")
    else:
        await bot.slack.refuse_connections(OUTAGE)
    status, _ = await bot.post_alert(alert_payload())
    assert status == 200
    await asyncio.sleep(2)
    assert bot.roots() == [] and outbox(bot).get("pending", 0) >= 2
    # the incident goes on without Slack: diagnosed, approval pending, all in the store
    await bot.wait(lambda: phase(bot) == "awaiting approval", timeout=60)
    await wait_drained(bot, timeout=OUTAGE + 60)
    assert_thread_whole_and_in_order(bot)
    assert "Likely cause on `web01`: *upstream_down*" in bot.thread_text()
    assert "awaiting approval" in bot.roots()[0].plain()
    actions = [r["action"] for r in bot.store().audit_records(1)]
    assert "message.failed" not in actions
    assert outbox(bot).get("failed", 0) == 0
    if mode == "503":
        assert len(bot.slack.outage_answers) >= 1
    async with bot.session.get(f"{bot.url}/no-such-route-{mode}") as resp:
        assert resp.status == 404
    async with bot.session.get(f"{bot.url}/metrics") as resp:
        metrics = await resp.text()
    # answer times by route; a path no route has is "other", never a label of its own
    assert re.search(r'opsbot_http_answer_seconds_count\{route="/alerts/alertmanager"\} [1-9]',
                     metrics), metrics
    assert 'opsbot_http_answer_seconds_count{route="other"}' in metrics
    assert "no-such-route" not in metrics
    kind = "server" if mode == "503" else "connection"
    errors = re.search(rf'opsbot_slack_errors_total{{kind="{kind}"}} (\d+)', metrics)
    assert errors and float(errors[1]) >= 1, metrics
    assert "opsbot_outbox_depth 0.0" in metrics
    assert 'opsbot_incidents{phase="awaiting approval"} 1.0' in metrics
    assert 'opsbot_step_duration_seconds_bucket{kind="ssh",le="+Inf",status="ok"}' in metrics
    assert re.search(r'opsbot_steps_total\{kind="ssh",status="ok"\} [1-9]', metrics)
    assert "opsbot_oldest_work_seconds 0.0" in metrics


async def test_a_post_whose_answer_was_lost_is_not_posted_twice(
        running_bot: RunningBot, healthy_web: WebLab) -> None:
    bot = running_bot
    healthy_web.stop_backend()
    # Slack does the first posts, then the connection breaks before the answer
    bot.slack.lose_answers("chat.postMessage", 3)
    await bot.post_alert(alert_payload())
    await bot.wait(lambda: phase(bot) == "awaiting approval", timeout=60)
    await wait_drained(bot)
    posts = [c for c in bot.slack.calls if c[0] == "chat.postMessage"]
    shown = [m for m in bot.thread() if not m.files]  # files come by files.upload
    assert len(posts) >= len(shown) + 1  # the root and the thread's posts, some tried twice ...
    assert_thread_whole_and_in_order(bot)  # ... and each shows once


async def test_rate_limits_are_waited_out_in_order(running_bot: RunningBot,
                                                   healthy_web: WebLab) -> None:
    bot = running_bot
    healthy_web.stop_backend()
    bot.slack.outage(3, "429")
    await bot.post_alert(alert_payload())
    await bot.wait(lambda: phase(bot) == "awaiting approval", timeout=60)
    await wait_drained(bot)
    assert {status for _, status in bot.slack.outage_answers} == {429}
    # Retry-After was honoured: one try a second while limited, not a busy loop
    assert len(bot.slack.outage_answers) <= 6
    assert_thread_whole_and_in_order(bot)


async def test_messages_queued_while_slack_is_down_go_after_a_restart(
        running_bot: RunningBot, healthy_web: WebLab) -> None:
    bot = running_bot
    healthy_web.stop_backend()
    bot.slack.outage(3600, "503")
    await bot.post_alert(alert_payload())
    await bot.wait(lambda: phase(bot) == "awaiting approval", timeout=60)
    await bot.process.stop()  # flushes as far as Slack allows: not at all
    # the root, the chain, the progress, the finding and the approval wait, coalesced
    assert outbox(bot).get("pending", 0) >= 4 and bot.roots() == []
    bot.slack.outage(0)
    await bot.process.start()
    await wait_drained(bot)
    assert_thread_whole_and_in_order(bot)
    assert any("[Approve](opsbot.approve)" in m.plain() for m in bot.thread())
    assert "INC-1" in bot.slack.messages(CHANNEL)[0].plain()
