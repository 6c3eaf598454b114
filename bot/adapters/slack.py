"""Slack at the edge: the only module importing slack_bolt.

Inbound: every request (HTTP on /slack/events, or Socket Mode through bolt) is verified and
checked here, then one dispatch translates slash commands and button clicks into
`bot.commands` and `Opsbot.decide`. Outbound: `SlackTransport`, posting the
incident's root message and thread through the Web API for the outbox (which retries).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import ClientConnectorError, ClientSession, ClientTimeout, web
from slack_bolt.async_app import AsyncApp
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_bolt.response import BoltResponse
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
    AsyncServerErrorRetryHandler,
)
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.webhook.async_client import AsyncWebhookClient

from bot import commands
from bot.adapters.slack_requests import (
    Replayed,
    Reply,
    click_of,
    command_refusal,
    signed_handler,
)
from bot.adapters.slack_requests import text_of as _str
from bot.config import Settings
from bot.errors import BotError, IngestError, NotFound
from bot.outbox import Delivered, DeliveryError, Outgoing
from bot.render import Message, decision_text
from bot.service import Opsbot

log = logging.getLogger("opsbot.slack")
FALLBACK_ERRORS = {"invalid_blocks", "invalid_blocks_format", "msg_too_long"}


TRANSIENT_ERRORS = {"ratelimited", "internal_error", "fatal_error", "service_unavailable",
                    "request_timeout"}
METADATA_TYPE = "opsbot_message"


def web_client(settings: Settings, *, retries: bool = True) -> AsyncWebClient:
    """The Web API client. The outbox's client has no retries of its own: the outbox retries,
    and must see each failure to keep order and not post twice."""
    kwargs: dict[str, Any] = {"token": settings.slack_bot_token, "timeout": 15}
    if settings.slack_api_url:
        kwargs["base_url"] = settings.slack_api_url
    client = AsyncWebClient(**kwargs)
    if retries:
        client.retry_handlers.extend([AsyncRateLimitErrorRetryHandler(max_retry_count=5),
                                      AsyncConnectionErrorRetryHandler(max_retry_count=2),
                                      AsyncServerErrorRetryHandler(max_retry_count=2)])
    else:
        client.retry_handlers.clear()
    return client


def _delivery_error(exc: Exception) -> DeliveryError:
    """What a failed Web API call means for the outbox: wait, back off, or give up."""
    if isinstance(exc, SlackApiError):
        resp = exc.response
        status = getattr(resp, "status_code", 200)
        data = resp.data if isinstance(getattr(resp, "data", None), dict) else {}
        error = str(data.get("error") or f"HTTP {status}")
        if status == 429 or error == "ratelimited":
            headers = {k.lower(): v for k, v in (getattr(resp, "headers", None) or {}).items()}
            raw = headers.get("retry-after")
            retry = raw[0] if isinstance(raw, list) else raw
            after = float(retry) if retry and str(retry).isdigit() else 1.0
            return DeliveryError(f"rate limited, Retry-After {after:g}s", retry_after=after,
                                 kind="ratelimited")
        if status >= 500 or error in TRANSIENT_ERRORS:
            return DeliveryError(f"Slack answered {error}", maybe_sent=True, kind="server")
        return DeliveryError(f"Slack refused it: {error}", permanent=True, kind="refused")
    if isinstance(exc, ClientConnectorError):  # never reached Slack
        return DeliveryError(f"cannot connect to Slack: {exc}", kind="connection")
    return DeliveryError(f"connection to Slack failed: {exc.__class__.__name__}: {exc}",
                         maybe_sent=True, kind="connection")


# Slack's own pace (https://docs.slack.dev/apis/web-api/rate-limits): chat.postMessage about
# one a second per channel, short bursts allowed; chat.update is Tier 3 (50 a minute). Calls
# are spaced (interval, burst) so that Slack never has to refuse one; its 429 + Retry-After is
# still honoured if it does.
PACE = {"chat_postMessage": (1.05, 3), "chat_update": (1.25, 2)}


class Pacer:
    """Spaces calls of one kind (GCRA): a burst of `burst` calls, then one per `interval`."""

    def __init__(self) -> None:
        self._tat: dict[tuple[str, str], float] = {}  # when the next call is "due"

    async def wait(self, method: str, channel: str) -> None:
        pace = PACE.get(method)
        if pace is None:
            return
        interval, burst = pace
        key = (method, channel if method == "chat_postMessage" else "")
        now = asyncio.get_running_loop().time()
        tat = max(self._tat.get(key, now), now)
        at = max(now, tat - (burst - 1) * interval)
        self._tat[key] = tat + interval  # taken before sleeping: the next caller queues after
        if at > now:
            await asyncio.sleep(at - now)


class SlackTransport:
    def __init__(self, client: AsyncWebClient, channel: str) -> None:
        self.client = client
        self.channel = channel
        self.pacer = Pacer()

    async def _send(self, method: str, msg: Message, **kwargs: Any) -> Any:
        call = getattr(self.client, method)
        await self.pacer.wait(method, str(kwargs.get("channel", "")))
        try:
            return await call(text=msg.text, blocks=msg.blocks, **kwargs)
        except SlackApiError as exc:
            error = exc.response.get("error") if exc.response is not None else None
            if error not in FALLBACK_ERRORS:
                raise
            log.warning("Slack refused blocks (%s); sending text only", error)
            return await call(text=f"{msg.text}\n(details: see the audit log; Slack said "
                                   f"{error})"[:3000], blocks=[], **kwargs)

    async def deliver(self, item: Outgoing) -> Delivered:
        try:
            return await self._deliver(item)
        except DeliveryError:
            raise
        except Exception as exc:  # the Web API or the network: the outbox decides what next
            raise _delivery_error(exc) from None

    async def _deliver(self, item: Outgoing) -> Delivered:
        incident = item.incident
        if item.upload is not None:
            filename, content, title = item.upload
            channel = incident.channel or self.channel
            if item.maybe_sent and await self._find_uploaded(item, channel):
                log.info("%s: %s had been uploaded already; not uploaded again",
                         incident.ref, filename)
                return Delivered(channel, None, updated=False)
            await self.client.files_upload_v2(channel=channel, thread_ts=incident.thread_ts,
                                              content=content, filename=filename, title=title)
            return Delivered(channel, None, updated=False)
        msg = item.message
        assert msg is not None
        if item.ts:  # posted before: an update, idempotent (the latest state wins)
            channel = incident.channel or self.channel
            await self._send("chat_update", msg, channel=channel, ts=item.ts)
            return Delivered(channel, item.ts, updated=True)
        if item.is_root:
            channel, thread_ts = self.channel, None
        else:
            if not incident.thread_ts or not incident.channel:
                raise DeliveryError(f"{incident.ref} has no root message to thread under",
                                    permanent=True, kind="refused")
            channel, thread_ts = incident.channel, incident.thread_ts
        if item.maybe_sent:
            found = await self._find_posted(item.id, channel, thread_ts)
            if found:
                log.info("%s: %s had been posted already (ts %s); not posted again",
                         incident.ref, item.key, found)
                return Delivered(channel, found, updated=False)
        metadata = {"event_type": METADATA_TYPE, "event_payload": {"outbox_id": item.id,
                                                                   "incident": incident.ref}}
        resp = await self._send("chat_postMessage", msg, channel=channel, thread_ts=thread_ts,
                                unfurl_links=False, metadata=metadata)
        return Delivered(str(resp["channel"]), str(resp["ts"]), updated=False)

    async def _find_uploaded(self, item: Outgoing, channel: str) -> bool:
        """A file this outbox row already shared (the answer to its upload was lost): one of
        the same name, title and size in the thread (or the channel)."""
        assert item.upload is not None
        filename, content, title = item.upload
        size = len(content.encode() if isinstance(content, str) else content)
        thread_ts = item.incident.thread_ts
        if thread_ts:
            resp = await self.client.conversations_replies(channel=channel, ts=thread_ts,
                                                           limit=200)
        else:
            resp = await self.client.conversations_history(channel=channel, limit=100)
        return any(f.get("name") == filename and f.get("title") == title and
                   f.get("size") == size
                   for m in resp.get("messages") or [] for f in m.get("files") or [])

    async def _find_posted(self, outbox_id: int, channel: str, thread_ts: str | None) -> str | None:
        """The ts of a message this outbox row already posted (its answer was lost), if any:
        recognised by the metadata every post carries."""
        if thread_ts:
            resp = await self.client.conversations_replies(channel=channel, ts=thread_ts,
                                                           limit=200, include_all_metadata=True)
        else:
            resp = await self.client.conversations_history(channel=channel, limit=100,
                                                           include_all_metadata=True)
        for m in resp.get("messages") or []:
            meta = m.get("metadata") or {}
            if meta.get("event_type") == METADATA_TYPE and \
                    (meta.get("event_payload") or {}).get("outbox_id") == outbox_id:
                return str(m["ts"])
        return None

    async def close(self) -> None:
        session = getattr(self.client, "session", None)
        if session is not None and not session.closed:
            await session.close()


# -- inbound ------------------------------------------------------------------------------
# Every request is checked here, before anything else reads it: signature and timestamp, a
# replay of an already seen signature, the body's shape. What passes reaches one dispatch
# (`SlackInbound.dispatch`), shared by HTTP and Socket Mode; the core never sees a payload.

USERGROUP_TTL = 60.0  # seconds a usergroup's member list is trusted


class Operators:
    """OPSBOT_OPERATORS: user IDs, and usergroup IDs (S…) whose members are asked of Slack."""

    def __init__(self, ids: frozenset[str], client: AsyncWebClient | None) -> None:
        self.users = {i for i in ids if not i.startswith("S")}
        self.groups = sorted(i for i in ids if i.startswith("S"))
        self.client = client
        self._members: dict[str, tuple[float, frozenset[str]]] = {}

    async def allows(self, user: str) -> bool:
        if user in self.users:
            return True
        for group in self.groups:
            if user in await self._group(group):
                return True
        return False

    async def _group(self, group: str) -> frozenset[str]:
        now = time.monotonic()
        cached = self._members.get(group)
        if cached and cached[0] > now:
            return cached[1]
        members: frozenset[str] = frozenset()
        if self.client is not None:
            try:
                resp = await self.client.usergroups_users_list(usergroup=group)
                members = frozenset(u for u in resp.get("users") or () if isinstance(u, str))
            except (SlackApiError, OSError, ValueError) as exc:
                # keep what was known (else nobody: refuse rather than guess); ask again later
                log.warning("members of usergroup %s unknown: %s", group, exc)
                members = cached[1] if cached else members
        self._members[group] = (now + USERGROUP_TTL, members)
        return members


class SlackInbound:
    """One dispatch for every verified Slack request, from HTTP or Socket Mode."""

    def __init__(self, bot: Opsbot, settings: Settings, client: AsyncWebClient | None) -> None:
        self.bot = bot
        self.client = client
        self.operators = Operators(settings.operators, client)
        self._session: ClientSession | None = None  # follow-ups: connections kept and reused
        bot.answer_resumed = self.answer_resumed
        bot.is_operator = self.operators.allows
        bot.click_job = self.click_work

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()

    async def dispatch(self, payload: dict[str, Any],
                       seen: tuple[str, float] | None = None) -> Reply:
        """What to ack with; IngestError (one line, a 400) for a shape no Slack client sends.
        `seen`: the replay key of a click that `records_itself` (Replayed if seen before)."""
        if payload.get("type") == "url_verification":
            return {"challenge": _str(payload.get("challenge"))}
        if "command" in payload:
            return await self.command(payload)
        if payload.get("type") == "block_actions":
            return await self.block_actions(payload, seen)
        log.info("Slack request of type %r acknowledged and ignored",
                 _str(payload.get("type"))[:40] or "event")
        return None

    async def command(self, payload: dict[str, Any]) -> Reply:
        refusal = command_refusal(payload)
        if refusal is not None:
            return _ephemeral(refusal)
        user, text = _str(payload.get("user_id")), str(payload.get("text", ""))
        operator = await self.operators.allows(user)
        answer = await commands.handle(self.bot, text, user, operator=operator)
        if answer.later is not None:
            later, url = answer.later, _str(payload.get("response_url"))
            channel = _str(payload.get("channel_id"))

            async def say(line: str) -> None:
                await self._respond(url, line, channel=channel, user=user)

            async def work() -> None:
                try:
                    await later(say)
                except BotError as exc:
                    await say(str(exc).splitlines()[0])

            # recorded before the ack: if opsbot dies now, the next start does it, and answers
            # through the same response_url (a secret: it stays in the work row, never logged)
            await self.bot.submit("command", {"text": text, "user": user, "operator": operator,
                                              "response_url": url, "channel": channel}, work)
        return _ephemeral(answer.now)

    async def block_actions(self, payload: dict[str, Any],
                            seen: tuple[str, float] | None = None) -> Reply:
        click = click_of(payload)
        if click is None:
            return None  # not one of our buttons (or a workflow step's action): nothing to do
        if not click["user"]:
            log.warning("approval click without a user refused")
            self.bot.tasks.spawn(self._respond(click["response_url"], "opsbot cannot tell who "
                                                                      "clicked; nothing was run."))
            return None
        # recorded before the ack: if opsbot dies now, the next start does it
        if not await self.bot.submit("click", click, self.click_work(click), seen=seen):
            raise Replayed
        return None

    def click_work(self, click: Mapping[str, Any]) -> Callable[[], Awaitable[None]]:
        """What a click does once acked (its work row's payload, `click_of`): the decision,
        and, when it changed nothing, why, to the one who clicked."""
        url = _str(click.get("response_url"))

        async def work() -> None:
            try:
                decision = await self.bot.approvals.check_origin(
                    click["token"], click["channel"], click["ts"], click["user"]) or \
                    await self.bot.approvals.decide(click["token"], click["approve"],
                                                    click["user"], via="slack",
                                                    check_authority=True)
            except NotFound:
                await self._respond(url, "This approval is unknown (it may have been pruned). "
                                         "Nothing was run.")
                return
            if not decision.outcome.recorded:
                await self._respond(url, decision_text(decision))

        return work

    async def answer_resumed(self, work: Mapping[str, Any], text: str) -> None:
        """The answer of a slash command that an earlier process accepted and did not finish
        (opsbot restarted, or another replica died): to the user who asked, where they asked."""
        await self._respond(_str(work.get("response_url")), f"(after a restart) {text}",
                            channel=_str(work.get("channel")), user=_str(work.get("user")))

    async def _respond(self, url: str, text: str, *, channel: str = "", user: str = "") -> None:
        """An ephemeral follow-up through the request's response_url; without one (workflow
        commands) or when it refuses (expired), chat.postEphemeral to the user in the channel;
        else it is only logged."""
        try:
            if url:
                if self._session is None or self._session.closed:
                    self._session = ClientSession(timeout=ClientTimeout(total=30))
                sent = await AsyncWebhookClient(url, session=self._session).send(
                    text=text, response_type="ephemeral", replace_original=False)
                if sent.status_code == 200:
                    return
                # expired (Slack honours one for 30 minutes and 5 answers): say it in the channel
                log.warning("a response_url refused a follow-up answer (HTTP %d)",
                            sent.status_code)
            if channel and user and self.client is not None:
                await self.client.chat_postEphemeral(channel=channel, user=user, text=text)
            elif not url:
                log.info("no response_url to answer with: %s", text)
        except (OSError, ValueError, SlackApiError) as exc:
            log.warning("a follow-up answer could not be sent: %s", exc)


def _ephemeral(text: str) -> dict[str, Any]:
    return {"response_type": "ephemeral", "text": text}


def slack_route(inbound: SlackInbound, rt: Any, secret: str) -> web.RouteDef:
    return web.post("/slack/events", signed_handler(secret, rt.requests, inbound.dispatch))


def bolt_app(inbound: SlackInbound, client: AsyncWebClient) -> AsyncApp:
    """Socket Mode: bolt receives the envelopes and acks; one global middleware hands every
    request to `inbound.dispatch`."""
    app = AsyncApp(client=client, signing_secret="unused-in-socket-mode",
                   process_before_response=False, request_verification_enabled=False)

    async def to_inbound(req: AsyncBoltRequest, resp: BoltResponse,
                         next: Callable[[], Awaitable[None]]) -> BoltResponse:
        try:
            reply = await inbound.dispatch(req.body if isinstance(req.body, dict) else {})
        except IngestError as exc:
            return BoltResponse(status=400, body=json.dumps({"error": str(exc)}))
        if reply is None:
            return BoltResponse(status=200, body="")
        return BoltResponse(status=200, body=json.dumps(reply),
                            headers={"content-type": "application/json"})

    app.use(to_inbound)
    return app


async def start_socket_mode(app: AsyncApp, app_token: str) -> Any:
    from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler

    handler = AsyncSocketModeHandler(app, app_token)
    await handler.connect_async()  # type: ignore[no-untyped-call]
    return handler
