"""Slack's inbound requests checked and read, without the Slack SDK: the signature and its
timestamp, the replay key, the body's shape, and what a click or a slash command carries.
Shared by the Slack adapter (bot.adapters.slack) and the edge process (bot.edgeproc), which
answers without importing slack_bolt."""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol
from urllib.parse import parse_qsl

from aiohttp import web

from bot.edge import BodyRefused, error, read_body
from bot.errors import IngestError
from bot.ingest import load_json
from bot.render import APPROVE, REJECT

MAX_SKEW = 300  # seconds: Slack's window for a signed request's timestamp
MAX_SLASH_TEXT = 2000  # characters of a slash command's text
SIGNATURE = re.compile(r"v0=[0-9a-f]{64}")


def check_signature(secret: str, timestamp: str | None, signature: str | None, body: bytes,
                    now: float) -> str | None:
    """None when Slack signed `body`; else the one-line reason it is refused."""
    if not timestamp or not (timestamp.isascii() and timestamp.isdigit()) or len(timestamp) > 12:
        return "X-Slack-Request-Timestamp is missing or not a number"
    if abs(now - int(timestamp)) > MAX_SKEW:
        return "X-Slack-Request-Timestamp is more than 5 minutes off (stale or replayed)"
    if not signature or not SIGNATURE.fullmatch(signature):
        return "X-Slack-Signature is missing or malformed"
    base = b"v0:" + timestamp.encode() + b":" + body
    expected = "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected.encode(), signature.encode()):
        return "X-Slack-Signature does not match (wrong signing secret?)"
    return None


def replay_key(timestamp: str, signature: str) -> tuple[str, float]:
    """What `Store.first_use` remembers of a signed request: its signature, for as long as
    its timestamp is acceptable."""
    return f"slack:{signature}", float(int(timestamp) + MAX_SKEW + 1)


def parse_body(body: bytes, content_type: str) -> dict[str, Any]:
    """A Slack request body: JSON (events, JSON-posted payloads), a form with `payload=` (JSON
    of interactivity), or a plain form (slash commands). IngestError for anything else."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise IngestError("the body is not UTF-8") from None
    if content_type == "application/json" or text.startswith("{"):
        data = load_json(text)
    else:
        try:
            pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=False,
                              max_num_fields=200)
        except ValueError as exc:
            raise IngestError(f"the form cannot be read: {exc}") from None
        form = dict(pairs)
        data = load_json(form["payload"], "payload") if "payload" in form else form
    if not isinstance(data, dict):
        raise IngestError("the payload must be a JSON object")
    return data


def text_of(value: Any) -> str:
    return value if isinstance(value, str) else ""


def dict_of(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def command_refusal(payload: dict[str, Any]) -> str | None:
    """Why a slash command cannot be read (one line), or None."""
    user, text = text_of(payload.get("user_id")), payload.get("text", "")
    if not user:
        return ("This request names no user (user_id), so opsbot cannot tell who asks. "
                "Nothing was done.")
    if not isinstance(text, str):
        return "The command's text must be text. Try `help`."
    if len(text) > MAX_SLASH_TEXT:
        return (f"That command is {len(text)} characters long; opsbot reads at most "
                f"{MAX_SLASH_TEXT}. Nothing was done.")
    return None


def click_of(payload: dict[str, Any]) -> dict[str, Any] | None:
    """A click on one of opsbot's approval buttons as its work row keeps it (token, approve,
    user, via, channel, ts, response_url), or None when it is not one (another app's button,
    a workflow step's action). IngestError for block_actions without actions."""
    actions = payload.get("actions")
    if "actions" in payload and not (isinstance(actions, list) and actions):
        raise IngestError("block_actions carries no actions")
    action = dict_of(actions[0]) if isinstance(actions, list) else {}
    action_id = text_of(action.get("action_id"))
    if action_id not in (APPROVE, REJECT):
        return None
    container, message = dict_of(payload.get("container")), dict_of(payload.get("message"))
    return {"token": text_of(action.get("value")), "approve": action_id == APPROVE,
            "user": text_of(dict_of(payload.get("user")).get("id")), "via": "slack",
            "channel": text_of(container.get("channel_id"))
            or text_of(dict_of(payload.get("channel")).get("id")),
            "ts": text_of(container.get("message_ts")) or text_of(message.get("ts")),
            "response_url": text_of(payload.get("response_url"))}


def records_itself(payload: dict[str, Any]) -> bool:
    """A click on one of opsbot's approval buttons, by a user: all it does before the ack is
    store its work row, so its replay check goes in the same transaction (one trip to the
    store instead of two)."""
    if payload.get("type") != "block_actions":
        return False
    try:
        click = click_of(payload)
    except IngestError:
        return False
    return click is not None and bool(click["user"])


Reply = dict[str, Any] | None  # what to ack with (a JSON object), or an empty ack
# what a checked request does: (payload, its replay key when it `records_itself`) -> the ack
Dispatch = Callable[[dict[str, Any], tuple[str, float] | None], Awaitable[Reply]]


class Replayed(Exception):
    """This signed request was received before: nothing is done again."""


class SeenStore(Protocol):
    """The store's request lane, as far as the check needs it."""

    async def first_use(self, key: str, until: float) -> bool: ...
    async def audit(self, action: str, actor: str, incident_id: int | None = None,
                    **detail: Any) -> int: ...


def signed_handler(secret: str, requests: SeenStore, dispatch: Dispatch
                   ) -> Callable[[web.Request], Awaitable[web.Response]]:
    """POST /slack/events: the body read whole, then `signed_answer`."""
    answer = signed_answer(secret, requests, dispatch)

    async def handle(request: web.Request) -> web.Response:
        try:
            body = await read_body(request)
        except BodyRefused as refused:
            return refused.response
        return await answer(request, body)

    return handle


def signed_answer(secret: str, requests: SeenStore, dispatch: Dispatch
                  ) -> Callable[[web.Request, bytes], Awaitable[web.Response]]:
    """The answer to a Slack request whose body was read: its signature and timestamp
    checked, a replay refused (the key remembered in the store, or with the click's work
    row), the body read; then `dispatch` says what to ack with."""
    async def answer(request: web.Request, body: bytes) -> web.Response:
        timestamp = request.headers.get("X-Slack-Request-Timestamp")
        signature = request.headers.get("X-Slack-Signature")
        problem = check_signature(secret, timestamp, signature, body, time.time())
        if problem:
            return error(401, problem)
        assert timestamp is not None and signature is not None
        seen = replay_key(timestamp, signature)

        async def replayed() -> web.Response:
            await requests.audit("slack.replay_refused", "slack", None,
                                 signature=signature[:16], timestamp=timestamp)
            return error(401, "this signed request was already received (a replay); ignored")

        payload: dict[str, Any] | None = None
        unreadable = ""
        try:
            payload = parse_body(body, request.content_type)
        except IngestError as exc:
            unreadable = str(exc)
        together = payload is not None and records_itself(payload)
        if not together and not await requests.first_use(*seen):
            return await replayed()
        if payload is None:
            return error(400, unreadable)
        if payload.get("ssl_check") == "1":
            return web.Response(status=200)
        try:
            reply = await dispatch(payload, seen if together else None)
        except Replayed:
            return await replayed()
        except IngestError as exc:
            return error(400, str(exc))
        return web.Response(status=200) if reply is None else web.json_response(reply)

    return answer
