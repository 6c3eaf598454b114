"""Slack at the edge: the only module importing slack_bolt.

Inbound: a bolt AsyncApp (HTTP on /slack/events, or Socket Mode) translating slash commands and
button clicks into `bot.commands` and `Opsbot.decide`. Outbound: `SlackTransport`, posting the
incident's root message and thread through the Web API (rate limits retried).
"""

from __future__ import annotations

import logging
import re
from typing import Any

from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.async_app import AsyncApp
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
    AsyncServerErrorRetryHandler,
)
from slack_sdk.web.async_client import AsyncWebClient

from bot import commands
from bot.config import Settings
from bot.errors import BotError, NotFound
from bot.models import Incident
from bot.render import APPROVE, REJECT, Message
from bot.service import Opsbot

log = logging.getLogger("opsbot.slack")
FALLBACK_ERRORS = {"invalid_blocks", "invalid_blocks_format", "msg_too_long"}


def web_client(settings: Settings) -> AsyncWebClient:
    kwargs: dict[str, Any] = {"token": settings.slack_bot_token}
    if settings.slack_api_url:
        kwargs["base_url"] = settings.slack_api_url
    client = AsyncWebClient(**kwargs)
    client.retry_handlers.extend([AsyncRateLimitErrorRetryHandler(max_retry_count=5),
                                  AsyncConnectionErrorRetryHandler(max_retry_count=2),
                                  AsyncServerErrorRetryHandler(max_retry_count=2)])
    return client


class SlackTransport:
    def __init__(self, client: AsyncWebClient, channel: str) -> None:
        self.client = client
        self.channel = channel

    async def _send(self, method: str, msg: Message, **kwargs: Any) -> Any:
        call = getattr(self.client, method)
        try:
            return await call(text=msg.text, blocks=msg.blocks, **kwargs)
        except SlackApiError as exc:
            error = exc.response.get("error") if exc.response is not None else None
            if error not in FALLBACK_ERRORS:
                raise
            log.warning("Slack refused blocks (%s); sending text only", error)
            return await call(text=f"{msg.text}\n(details: see the audit log; Slack said "
                                   f"{error})"[:3000], blocks=[], **kwargs)

    async def root(self, incident: Incident, msg: Message) -> tuple[str, str] | None:
        if incident.thread_ts and incident.channel:
            await self._send("chat_update", msg, channel=incident.channel, ts=incident.thread_ts)
            return None
        resp = await self._send("chat_postMessage", msg, channel=self.channel,
                                unfurl_links=False)
        return str(resp["channel"]), str(resp["ts"])

    async def post(self, incident: Incident, key: str, msg: Message,
                   existing: str | None) -> str | None:
        if not incident.thread_ts or not incident.channel:
            raise BotError(f"{incident.ref} has no root message to thread under")
        if existing:
            await self._send("chat_update", msg, channel=incident.channel, ts=existing)
            return existing
        resp = await self._send("chat_postMessage", msg, channel=incident.channel,
                                thread_ts=incident.thread_ts, unfurl_links=False)
        return str(resp["ts"])

    async def upload(self, incident: Incident, filename: str, content: str, title: str) -> None:
        await self.client.files_upload_v2(channel=incident.channel or self.channel,
                                          thread_ts=incident.thread_ts, content=content,
                                          filename=filename, title=title)

    async def close(self) -> None:
        session = getattr(self.client, "session", None)
        if session is not None and not session.closed:
            await session.close()


def bolt_app(bot: Opsbot, settings: Settings, client: AsyncWebClient) -> AsyncApp:
    app = AsyncApp(client=client, signing_secret=settings.slack_signing_secret or "unused",
                   process_before_response=False,
                   request_verification_enabled=not settings.socket_mode)

    @app.command(re.compile(r".*"))
    async def on_command(ack: Any, command: dict[str, Any], respond: Any) -> None:
        answer = await commands.handle(bot, command.get("text", ""), command["user_id"])
        await ack(response_type="ephemeral", text=answer.now)
        if answer.later is None:
            return
        later = answer.later

        async def say(text: str) -> None:
            await respond(text=text, response_type="ephemeral", replace_original=False)

        async def work() -> None:
            try:
                await later(say)
            except BotError as exc:
                await say(str(exc).splitlines()[0])

        bot.spawn(work())

    @app.action(re.compile(rf"^({re.escape(APPROVE)}|{re.escape(REJECT)})$"))
    async def on_click(ack: Any, body: dict[str, Any], action: dict[str, Any],
                       respond: Any) -> None:
        await ack()
        user = body["user"]["id"]
        approve = action["action_id"] == APPROVE

        async def work() -> None:
            try:
                text = await bot.decide(action.get("value", ""), approve, user, via="slack",
                                        check_authority=True)
            except NotFound:
                text = "This approval is unknown (it may have been pruned). Nothing was run."
            if not text.startswith(("Approved", "Rejected")):
                await respond(text=text, response_type="ephemeral", replace_original=False)

        bot.spawn(work())

    @app.event(re.compile(r".*"))
    async def on_event(ack: Any) -> None:
        await ack()

    return app


def slack_route(app: AsyncApp) -> web.RouteDef:
    async def handle(request: web.Request) -> web.Response:
        return await to_aiohttp_response(await app.async_dispatch(await to_bolt_request(request)))

    return web.post("/slack/events", handle)


async def start_socket_mode(app: AsyncApp, app_token: str) -> Any:
    from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler

    handler = AsyncSocketModeHandler(app, app_token)
    await handler.connect_async()  # type: ignore[no-untyped-call]
    return handler
