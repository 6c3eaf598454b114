"""Requests TO the bot, built and signed exactly as Slack sends them.

    body = slash_command_body("run restart-nginx web1")
    await session.post(f"{bot}/slack/events", data=body, headers=sign(SECRET, body))

Signing: https://docs.slack.dev/authentication/verifying-requests-from-slack/ ("v0=" + hex
HMAC-SHA256 of "v0:{timestamp}:{body}" keyed with the app's signing secret).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any
from urllib.parse import urlencode

TEAM_ID = "T0TEST"
TEAM_DOMAIN = "fake-team"
API_APP_ID = "A0OPSBOT"
VERIFICATION_TOKEN = "deprecated-verification-token"
RESPONSE_URL = "https://hooks.slack.com/actions/T0TEST/1/fake"
TRIGGER_ID = "1700000000.1.fake-trigger"
FORM = "application/x-www-form-urlencoded"


def sign(signing_secret: str, body: bytes | str, timestamp: int | None = None) -> dict[str, str]:
    """The headers Slack adds to a request carrying `body`."""
    if isinstance(body, str):
        body = body.encode()
    ts = str(int(time.time()) if timestamp is None else timestamp)
    base = b"v0:" + ts.encode() + b":" + body
    digest = hmac.new(signing_secret.encode(), base, hashlib.sha256).hexdigest()
    return {
        "X-Slack-Request-Timestamp": ts,
        "X-Slack-Signature": f"v0={digest}",
        "Content-Type": FORM,
    }


def _user_name(user_id: str) -> str:
    return f"user-{user_id}"  # the name the fake's users.info gives


def slash_command_body(
    text: str,
    user_id: str = "U0ALICE",
    command: str = "/opsbot",
    channel_id: str = "C0INCIDENT",
    response_url: str = RESPONSE_URL,
    trigger_id: str = TRIGGER_ID,
) -> bytes:
    """A slash command invocation, form-encoded with every field Slack sends."""
    return urlencode(
        {
            "token": VERIFICATION_TOKEN,
            "team_id": TEAM_ID,
            "team_domain": TEAM_DOMAIN,
            "channel_id": channel_id,
            "channel_name": "incidents",
            "user_id": user_id,
            "user_name": _user_name(user_id),
            "command": command,
            "text": text,
            "api_app_id": API_APP_ID,
            "is_enterprise_install": "false",
            "response_url": response_url,
            "trigger_id": trigger_id,
        }
    ).encode()


def block_actions_body(
    action_id: str,
    value: str,
    user_id: str,
    channel_id: str,
    message_ts: str,
    thread_ts: str | None = None,
    response_url: str = RESPONSE_URL,
    *,
    block_id: str = "actions",
    message: dict[str, Any] | None = None,
    button_text: str = "",
    trigger_id: str = TRIGGER_ID,
) -> bytes:
    """A button click (interactivity payload of type block_actions), form-encoded as payload=JSON.

    `message` is the clicked message as Slack would echo it (e.g. fakeslack's Msg.to_slack());
    without it a minimal bot message with that ts is used.
    """
    if message is None:
        message = {
            "type": "message",
            "user": "U0BOT",
            "bot_id": "B0BOT",
            "text": "",
            "ts": message_ts,
        }
        if thread_ts:
            message["thread_ts"] = thread_ts
    container = {
        "type": "message",
        "message_ts": message_ts,
        "channel_id": channel_id,
        "is_ephemeral": False,
    }
    if thread_ts:
        container["thread_ts"] = thread_ts
    payload: dict[str, Any] = {
        "type": "block_actions",
        "user": {
            "id": user_id,
            "username": _user_name(user_id),
            "name": _user_name(user_id),
            "team_id": TEAM_ID,
        },
        "api_app_id": API_APP_ID,
        "token": VERIFICATION_TOKEN,
        "container": container,
        "trigger_id": trigger_id,
        "team": {"id": TEAM_ID, "domain": TEAM_DOMAIN},
        "enterprise": None,
        "is_enterprise_install": False,
        "channel": {"id": channel_id, "name": "incidents"},
        "message": message,
        "state": {"values": {}},
        "response_url": response_url,
        "actions": [
            {
                "action_id": action_id,
                "block_id": block_id,
                "text": {"type": "plain_text", "text": button_text, "emoji": True},
                "value": value,
                "type": "button",
                "action_ts": f"{time.time():.6f}",
            }
        ],
    }
    return urlencode({"payload": json.dumps(payload)}).encode()


def find_button(blocks: list[dict], action_id: str) -> tuple[str, dict]:
    """(block_id, element) of the button with `action_id` in a message's blocks."""
    for i, block in enumerate(blocks):
        elements = list(block.get("elements") or []) if block.get("type") == "actions" else []
        if isinstance(block.get("accessory"), dict):
            elements.append(block["accessory"])
        for element in elements:
            if element.get("action_id") == action_id:
                return block.get("block_id", f"block{i}"), element
    raise LookupError(f"no element with action_id {action_id!r} in the message")


def click_body(
    msg: Any, action_id: str, user_id: str = "U0ALICE", response_url: str = RESPONSE_URL
) -> bytes:
    """The block_actions body for clicking button `action_id` on a fakeslack Msg."""
    block_id, button = find_button(msg.blocks, action_id)
    return block_actions_body(
        action_id,
        str(button.get("value", "")),
        user_id,
        msg.channel,
        msg.ts,
        None if msg.thread_ts in (None, msg.ts) else msg.thread_ts,
        response_url,
        block_id=block_id,
        message=msg.to_slack(),
        button_text=str((button.get("text") or {}).get("text", "")),
    )
