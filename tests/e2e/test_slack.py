"""Slack requests to the bot, signed as Slack signs them: slash commands and approval clicks."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.botfixtures import CHANNEL, RunningBot, alert_payload
from tests.fakeslack import Msg
from tests.lab import WebLab
from tests.slacksign import block_actions_body, click_body, find_button

# each test with either edge (OPSBOT_EDGE): the HTTP thread, and the process of its own
pytestmark = [pytest.mark.lab,
              pytest.mark.parametrize("running_bot", ["thread", "process"], indirect=True)]


async def incident_with_pending_approval(bot: RunningBot, web: WebLab, *,
                                         via_slash: str | None = None) -> Msg:
    web.stop_backend()
    if via_slash:
        status, text = await bot.slash("run nginx-502 web01", user=via_slash)
        assert status == 200 and "Running nginx-502 on web01" in text
    else:
        await bot.post_alert(alert_payload())
    return await bot.wait(lambda: next((m for m in bot.thread() if "[Approve](opsbot.approve)"
                                        in m.plain()), None) if bot.roots() else None)


def ephemeral_texts(bot: RunningBot, user: str) -> list[str]:
    return [r.text for r in bot.slack.responses if r.user == user] + \
        [m.text for m in bot.slack.ephemerals if m.recipient == user]


async def test_approver_click_fixes_it_once(running_bot: RunningBot, healthy_web: WebLab) -> None:
    bot = running_bot
    approval = await incident_with_pending_approval(bot, healthy_web)
    # a non-approver's click changes nothing, and is told so
    status, _ = await bot.click(approval, "opsbot.approve", "U0MALLORY")
    assert status == 200
    await bot.wait(lambda: any("not allowed" in t for t in ephemeral_texts(bot, "U0MALLORY")))
    assert bot.store().approvals_of(1)[0].status == "pending"
    assert healthy_web.program_state() == "STOPPED"
    # an approver clicks twice and a second approver at once: one run
    replay = click_body(approval, "opsbot.approve", user_id="U0ALICE",
                        response_url=bot.slack.response_url(channel=CHANNEL, user="U0ALICE"))
    signed_at = int(time.time())
    clicks = [bot.slack_request(replay, timestamp=signed_at),
              bot.click(approval, "opsbot.approve", "U0ALICE"),
              bot.click(approval, "opsbot.approve", "U0BOB")]
    assert [s for s, _ in await asyncio.gather(*clicks)] == [200, 200, 200]
    await bot.wait(lambda: "verified" in bot.roots()[0].plain(), timeout=40)
    assert healthy_web.proxy_status() == 200
    steps = [s.step_id for s in bot.store().steps_of(1) if s.phase == "remediation"]
    assert steps == ["start_program"]
    decided = bot.store().approvals_of(1)[0]
    assert decided.status == "approved" and decided.decided_by in ("U0ALICE", "U0BOB")
    await bot.wait(lambda: "approved by" in approval.plain())
    assert "opsbot.approve" not in approval.plain()
    root = bot.roots()[0].plain()
    assert "approved by <@" in root and "verified" in root
    assert "(`verify_proxy`) on `web01` — *ok*" in bot.thread_text()
    # a replay of the signed click (within the 5 minutes Slack allows) is refused
    status, text = await bot.slack_request(replay, timestamp=signed_at)
    assert status == 401 and "replay" in text
    await asyncio.sleep(1)
    assert [s.step_id for s in bot.store().steps_of(1) if s.phase == "remediation"] == \
        ["start_program"]
    actions = [r["action"] for r in bot.store().audit_records(1)]
    assert "approval.refused" in actions and actions.count("approval.approved") == 1
    assert "slack.replay_refused" in [r["action"] for r in bot.store().audit_records()]


async def test_a_click_counts_only_on_the_approvals_own_message(
        running_bot: RunningBot, healthy_web: WebLab) -> None:
    bot = running_bot
    approval = await incident_with_pending_approval(bot, healthy_web)
    root = bot.roots()[0]
    url = bot.slack.response_url(channel=CHANNEL, user="U0BOB")
    _, button = find_button(approval.blocks, "opsbot.approve")
    elsewhere = [  # the right token, clicked on another message, or in another channel
        block_actions_body("opsbot.approve", button["value"], "U0BOB", CHANNEL, root.ts,
                           response_url=url),
        block_actions_body("opsbot.approve", button["value"], "U0BOB", "C0ELSEWHERE",
                           approval.ts, response_url=url)]
    for body in elsewhere:
        status, _ = await bot.slack_request(body)
        assert status == 200
    await bot.wait(lambda: len([r for r in bot.slack.responses if r.user == "U0BOB"
                                and "belongs to another message" in r.text]) == 2)
    assert bot.store().approvals_of(1)[0].status == "pending"
    refused = [r for r in bot.store().audit_records(1) if r["action"] == "approval.refused"]
    assert len(refused) == 2 and "clicked outside its message" in refused[0]["detail"]
    assert healthy_web.program_state() == "STOPPED"


async def test_two_person_rule_and_reject(running_bot: RunningBot, healthy_web: WebLab) -> None:
    bot = running_bot
    approval = await incident_with_pending_approval(bot, healthy_web, via_slash="U0ALICE")
    await bot.click(approval, "opsbot.approve", "U0ALICE")
    await bot.wait(lambda: any("two-person rule" in t for t in ephemeral_texts(bot, "U0ALICE")))
    assert bot.store().approvals_of(1)[0].status == "pending"
    await bot.click(approval, "opsbot.reject", "U0BOB")
    await bot.wait(lambda: bot.store().approvals_of(1)[0].status == "rejected")
    await bot.wait(lambda: "rejected by <@U0BOB>" in approval.plain())
    assert healthy_web.program_state() == "STOPPED"


async def test_forged_and_stale_requests_get_401(running_bot: RunningBot,
                                                 healthy_web: WebLab) -> None:
    from tests.slacksign import slash_command_body

    bot = running_bot
    approval = await incident_with_pending_approval(bot, healthy_web)
    body = click_body(approval, "opsbot.approve", user_id="U0ALICE")
    status, _ = await bot.slack_request(body, secret="not-the-secret")
    assert status == 401
    status, _ = await bot.slack_request(body, timestamp=int(time.time()) - 600)
    assert status == 401
    status, _ = await bot.slack_request(slash_command_body("resolve INC-1"),
                                        secret="not-the-secret")
    assert status == 401
    await asyncio.sleep(1)
    assert bot.store().approvals_of(1)[0].status == "pending"
    assert bot.store().get_incident(1).status == "open"


async def test_slash_commands(running_bot: RunningBot, healthy_web: WebLab) -> None:
    bot = running_bot
    op = "U0ALICE"  # OPSBOT_OPERATORS defaults to the approvers
    status, text = await bot.slash("help")
    assert status == 200 and "timeline <INC-n>" in text
    _, text = await bot.slash("runbooks")
    assert "nginx-502" in text
    _, text = await bot.slash("run nginx-502 web09", user=op)
    assert "no host or group named 'web09'" in text
    _, text = await bot.slash("run nginx-502 web01 upstream_port=http", user=op)
    assert "parameter upstream_port" in text
    _, text = await bot.slash("run nope web01", user=op)
    assert "no runbook named 'nope'" in text and "nginx-502" in text
    _, text = await bot.slash("run nginx-502 web --plan", user=op)
    assert "web01" in text and "web02" in text and "supervisorctl -c" in text
    assert bot.store().list_incidents() == []
    _, text = await bot.slash("frobnicate")
    assert "Unknown command" in text
    approval = await incident_with_pending_approval(bot, healthy_web)
    assert approval
    _, text = await bot.slash("incidents")
    assert "INC-1" in text
    _, text = await bot.slash("status INC-1")
    assert "awaiting approval" in text and "start_program" in text
    # anyone may look; only operators may act, and each refusal is audited
    for verb in ("run nginx-502 web01", "diag web01", "timeline INC-1", "resolve INC-1"):
        status, text = await bot.slash(verb)
        assert status == 200 and "Only operators may" in text and "\\n" not in text
    refused = [r for r in bot.store().audit_records() if r["action"] == "command.refused"]
    assert len(refused) == 4 and all(r["actor"] == "U0CAROL" for r in refused)
    def timelines() -> list:
        return [f for f in bot.slack.files if f.name == "INC-1-timeline.md"]

    assert len(bot.store().list_incidents()) == 1 and not timelines()
    _, text = await bot.slash("timeline INC-1 md", user=op)
    await bot.wait(timelines)
    assert "## Timeline (UTC)" in timelines()[0].text
    _, text = await bot.slash("timeline INC-1 postmortem", user=op)
    draft = await bot.wait(lambda: next((f for f in bot.slack.files
                                         if f.name == "INC-1-postmortem.md"), None))
    assert "mermaid" in draft.text
    _, text = await bot.slash("resolve INC-1", user=op)
    await bot.wait(lambda: bot.store().get_incident(1).status == "resolved")
    assert bot.store().approvals_of(1)[0].status == "cancelled"


@pytest.mark.bot_env(OPSBOT_APPROVAL_TTL="2")
async def test_pending_approval_expires(running_bot: RunningBot, healthy_web: WebLab) -> None:
    bot = running_bot
    approval = await incident_with_pending_approval(bot, healthy_web)
    late_click = click_body(approval, "opsbot.approve", user_id="U0BOB",
                            response_url=bot.slack.response_url(channel=CHANNEL, user="U0BOB"))
    await bot.wait(lambda: bot.store().approvals_of(1)[0].status == "expired", timeout=15)
    await bot.wait(lambda: "expired" in approval.plain())
    assert "opsbot.approve" not in approval.plain()
    # a click on the old buttons after expiry runs nothing, and says why
    status, _ = await bot.slack_request(late_click)
    assert status == 200
    await bot.wait(lambda: any("already expired" in t for t in ephemeral_texts(bot, "U0BOB")))
    assert healthy_web.program_state() == "STOPPED"


async def test_approval_is_bound_to_what_was_shown(running_bot: RunningBot,
                                                   healthy_web: WebLab) -> None:
    bot = running_bot
    approval = await incident_with_pending_approval(bot, healthy_web)
    body = click_body(approval, "opsbot.approve", user_id="U0BOB",
                      response_url=bot.slack.response_url(channel=CHANNEL, user="U0BOB"))
    # the parameters behind the pending approval change (as if someone edited the record)
    db = bot.store().db
    db.execute("UPDATE approvals SET params = json_set(params, '$.program', 'ds:converter')")
    status, _ = await bot.slack_request(body)
    assert status == 200
    await bot.wait(lambda: "the step changed since it was approved" in bot.thread_text())
    assert healthy_web.program_state() == "STOPPED"
    assert not [s for s in bot.store().steps_of(1) if s.phase == "remediation"]


async def test_restarted_bot_keeps_incident_and_pending_approval(
        running_bot: RunningBot, healthy_web: WebLab) -> None:
    bot = running_bot
    approval = await incident_with_pending_approval(bot, healthy_web)
    await bot.restart()
    # a repeated notification after the restart joins the same incident
    await bot.post_alert(alert_payload())
    await bot.wait(lambda: len(bot.store().alerts_of(1)) == 2)
    await bot.click(approval, "opsbot.approve", "U0BOB")
    await bot.wait(lambda: "verified" in bot.roots()[0].plain(), timeout=40)
    assert len(bot.roots()) == 1 and healthy_web.proxy_status() == 200


async def test_slack_rate_limits_are_waited_out(running_bot: RunningBot,
                                                healthy_web: WebLab) -> None:
    bot = running_bot
    bot.slack.rate_limit("chat.postMessage", 2, retry_after=1)
    approval = await incident_with_pending_approval(bot, healthy_web)
    # the first post already carries the latest root (updates are coalesced): an update comes
    # with a decision, and meets its own two 429s
    bot.slack.rate_limit("chat.update", 2, retry_after=1)
    await bot.click(approval, "opsbot.reject", "U0BOB")
    await bot.wait(lambda: "rejected by <@U0BOB>" in approval.plain())
    assert [m for m, _ in bot.slack.rate_limited] == ["chat.postMessage"] * 2 + \
        ["chat.update"] * 2
    assert "Likely cause on `web01`: *upstream_down*" in bot.thread_text()
    assert "message.failed" not in [r["action"] for r in bot.store().audit_records(1)]


@pytest.mark.bot_env(OPSBOT_ALLOW_SELF_APPROVAL="true")
async def test_small_team_may_approve_its_own_run(running_bot: RunningBot,
                                                  healthy_web: WebLab) -> None:
    bot = running_bot
    approval = await incident_with_pending_approval(bot, healthy_web, via_slash="U0ALICE")
    await bot.click(approval, "opsbot.approve", "U0ALICE")
    await bot.wait(lambda: "verified" in bot.roots()[0].plain(), timeout=40)
    assert bot.store().approvals_of(1)[0].decided_by == "U0ALICE"


async def test_alert_no_runbook_fits_still_opens_an_incident(running_bot: RunningBot) -> None:
    bot = running_bot
    await bot.post_alert(alert_payload(name="DiskAlmostFull"))
    await bot.wait(lambda: bot.roots() and "No runbook's matchers fit" in bot.thread_text())
    assert "none matched" in bot.roots()[0].plain()
    assert bot.store().steps_of(1) == []
