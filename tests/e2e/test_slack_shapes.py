"""Every payload shape bolt-python's own tests send (tests/scenario_tests_async: slash commands
as forms and as JSON, org-wide and enterprise installs, DMs, block_actions of workflow
functions without `user`, view submissions, shortcuts, events, url_verification, ssl_check),
signed as Slack signs them: each gets an answer or a clear refusal, never a traceback."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from tests.botfixtures import SIGNING_SECRET, RunningBot
from tests.slacksign import sign


def command(text: str, **fields: str) -> dict[str, str]:
    body = {"token": "verification_token", "team_id": "T111", "team_domain": "test-domain",
            "channel_id": "C111", "channel_name": "random", "user_id": "W111",
            "user_name": "primary-owner", "command": "/opsbot", "text": text,
            "enterprise_id": "E111", "enterprise_name": "Org Name",
            "response_url": "", "trigger_id": "111.111.xxx"}
    body.update(fields)
    return {k: v for k, v in body.items() if v != ""}


def click(action_id: str, value: str, **over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": "block_actions",
        "user": {"id": "W111", "username": "primary-owner", "name": "primary-owner",
                 "team_id": "T111"},
        "api_app_id": "A111", "token": "verification_token",
        "container": {"type": "message", "message_ts": "111.222", "channel_id": "C111",
                      "is_ephemeral": True},
        "trigger_id": "111.222.valid",
        "team": {"id": "T111", "domain": "workspace-domain", "enterprise_id": "E111",
                 "enterprise_name": "Sandbox Org"},
        "channel": {"id": "C111", "name": "test-channel"},
        "actions": [{"action_id": action_id, "block_id": "b", "value": value, "type": "button",
                     "text": {"type": "plain_text", "text": "Button", "emoji": True},
                     "action_ts": "1596530385.194939"}],
    }
    body.update(over)
    return body


FUNCTION_ACTION = {  # a workflow function's interactivity: no user, no actions, no channel
    "type": "block_actions", "enterprise_id": "E111", "team_id": "T111",
    "bot_access_token": "xwfp-xxx",
    "function_data": {"execution_id": "Fx111", "inputs": {"customer_id": "Ux111"}},
    "interactivity": {"interactivity_pointer": "111.222.xxx"},
}
VIEW_SUBMISSION = {
    "type": "view_submission",
    "team": {"id": "T111", "domain": "workspace-domain", "enterprise_id": "E111",
             "enterprise_name": "Sandbox Org"},
    "user": {"id": "W111", "username": "primary-owner", "team_id": "T111"},
    "api_app_id": "A111", "trigger_id": "111.222.valid",
    "view": {"id": "V111", "type": "modal", "callback_id": "view-id", "state": {"values": {}}},
    "response_urls": [], "is_enterprise_install": False,
}
SHORTCUT = {"type": "shortcut", "token": "xxx", "action_ts": "1606983924.521157",
            "team": {"id": "T111", "domain": "ddd"},
            "user": {"id": "U111", "username": "use", "team_id": "T111"},
            "is_enterprise_install": False, "enterprise": None,
            "callback_id": "run-socket-mode", "trigger_id": "111.222.xxx"}
ORG_WIDE_EVENT = {  # an org-wide install: no team_id at the top, enterprise install
    "team_id": None, "enterprise_id": "E111", "api_app_id": "A111", "type": "event_callback",
    "event": {"type": "app_mention", "text": "<@U111> hey", "user": "W222",
              "ts": "1678252212.229129", "channel": "C111", "event_ts": "1678252212.229129"},
    "event_id": "Ev111", "event_time": 1678252212, "is_ext_shared_channel": False,
    "authorizations": [{"enterprise_id": "E111", "team_id": None, "user_id": "W111",
                        "is_bot": True, "is_enterprise_install": True}],
}
FUNCTION_EVENT = {"type": "event_callback", "token": "xxx", "enterprise_id": "E111",
                  "team_id": "T111",
                  "event": {"type": "function_executed", "function_execution_id": "Fx111",
                            "bot_access_token": "xwfp-xxx", "inputs": {"customer_id": "Ux111"}}}


def form(fields: dict[str, Any]) -> bytes:
    return urlencode(fields).encode()


def as_payload(body: dict[str, Any]) -> bytes:
    return urlencode({"payload": json.dumps(body)}).encode()


async def post(bot: RunningBot, body: bytes, content_type: str | None = None) -> tuple[int, str]:
    headers = sign(SIGNING_SECRET, body)
    if content_type:
        headers["Content-Type"] = content_type
    async with bot.session.post(f"{bot.url}/slack/events", data=body, headers=headers) as resp:
        return resp.status, await resp.text()


async def test_bolt_payload_shapes_get_answers(light_bot: RunningBot,
                                               caplog: pytest.LogCaptureFixture) -> None:
    bot = light_bot
    caplog.set_level(logging.WARNING)
    url = bot.slack.response_url(channel="C111", user="W111")
    dm_url = bot.slack.response_url(channel="D111", user="W111")
    answered = [  # (body, content type, words of the immediate answer)
        (form(command("help", response_url=url)), None, "incident response in this channel"),
        (json.dumps(command("help")).encode(), "application/json", "incident response"),
        (form(command("status INC-7")), None, "no incident INC-7"),  # no response_url
        (form(command("run nginx-502 edge01 --plan")), None, "Only operators may `run`"),
        (form(command("incidents", channel_id="D111", channel_name="directmessage")), None,
         "No incidents."),
    ]
    for body, ctype, words in answered:
        status, text = await post(bot, body, ctype)
        assert status == 200 and words in json.loads(text)["text"], (body[:60], text)
    acked = [  # acknowledged with an empty 200; anything to say goes to response_url
        as_payload(click("opsbot.approve", "no-such-token", response_url=url)),
        as_payload(click("opsbot.reject", "no-such-token", response_url=dm_url,
                         channel={"id": "D111", "name": "directmessage"},
                         container={"type": "message", "message_ts": "1.2",
                                    "channel_id": "D111", "is_ephemeral": False})),
        json.dumps(click("opsbot.approve", "no-such-token", response_url=url)).encode(),
        as_payload(click("someone.elses.button", "x")),
        as_payload(FUNCTION_ACTION),
        as_payload({**FUNCTION_ACTION, "actions": [{"action_id": "opsbot.approve",
                                                    "value": "t"}], "response_url": url}),
        as_payload(VIEW_SUBMISSION),
        as_payload(SHORTCUT),
        json.dumps(ORG_WIDE_EVENT).encode(),
        json.dumps(FUNCTION_EVENT).encode(),
        form({"ssl_check": "1", "token": "xxx"}),
    ]
    for body in acked:
        status, text = await post(bot, body)
        assert (status, text) == (200, ""), (body[:80], text)
    status, text = await post(bot, json.dumps({"type": "url_verification", "token": "x",
                                               "challenge": "c-123"}).encode())
    assert status == 200 and json.loads(text) == {"challenge": "c-123"}
    said = await bot.wait(lambda: [r.text for r in bot.slack.responses]
                          if len(bot.slack.responses) >= 4 else None)
    assert said.count("This approval is unknown (it may have been pruned). Nothing was run.") \
        == 3
    assert "opsbot cannot tell who clicked; nothing was run." in said
    assert bot.store().list_incidents() == []
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


@pytest.mark.bot_env(OPSBOT_OPERATORS="S0ONCALL,U0ALICE,S0GONE")
async def test_operators_may_be_usergroups(light_bot: RunningBot) -> None:
    bot = light_bot
    bot.slack.usergroups["S0ONCALL"] = ["U0DAVE"]  # S0GONE does not exist: nobody is in it
    for user, allowed in (("U0DAVE", True), ("U0ALICE", True), ("U0CAROL", False),
                          ("U0BOB", False)):  # an approver, but not an operator here
        status, text = await bot.slash("run nginx-502 edge01 --plan", user=user)
        answer = json.loads(text)["text"]
        assert status == 200
        assert ("Plan for nginx-502 on edge01" in answer) is allowed, (user, answer)
        assert ("Only operators may `run`" in answer) is not allowed, (user, answer)
    asked = [p for m, p in bot.slack.calls if m == "usergroups.users.list"]
    assert {p["usergroup"] for p in asked} == {"S0ONCALL", "S0GONE"}
    assert sorted(p["usergroup"] for p in asked) == ["S0GONE", "S0ONCALL"]  # each once: cached
    refused = [r for r in bot.store().audit_records() if r["action"] == "command.refused"]
    assert sorted(r["actor"] for r in refused) == ["U0BOB", "U0CAROL"]


async def test_a_command_without_response_url_is_answered_later_in_the_channel(
        light_bot: RunningBot) -> None:
    bot = light_bot
    alert = (Path(__file__).resolve().parents[1] / "data/alertmanager/zulip-alert.json")
    status, _ = await bot.post_alert(None, raw=alert.read_bytes())
    assert status == 200
    await bot.wait(lambda: bot.store().list_incidents())
    body = form(command("timeline INC-1 md", user_id="U0ALICE", channel_id="C0INCIDENT"))
    status, text = await post(bot, body)
    assert status == 200 and "Exporting INC-1 as md" in json.loads(text)["text"]
    said = await bot.wait(lambda: [m for m in bot.slack.ephemerals if m.recipient == "U0ALICE"])
    assert said[0].text == "Timeline of INC-1 uploaded to its thread."
    # the file goes through the outbox, behind the thread's paced messages
    await bot.wait(lambda: any(f.name == "INC-1-timeline.md" for f in bot.slack.files))
