"""An in-process stand-in for the Slack Web API, for tests and local runs.

It answers the methods opsbot uses the way slack.com does (error names, Block Kit limits, HTTP 429
with Retry-After) and records everything, so a test can assert on what the channel would show:

    fake = FakeSlack()
    client = AsyncWebClient(token="xoxb-test-token", base_url=await fake.start())
    ...
    assert "Approve" in fake.messages("C0INCIDENT")[0].plain()

Standalone: ``python -m tests.fakeslack --port 3001`` prints the base URL for SLACK_API_URL.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from aiohttp import web

MAX_BLOCKS = 50
MAX_TEXT = 40_000
# Longest text Slack accepts in a section, header, section field and button label.
TEXT_LIMITS = {"section": 3000, "header": 150, "field": 2000, "button": 75}
MAX_ELEMENTS = {"context": 10, "actions": 25}
MAX_FIELDS = 10
JSON_PARAMS = ("blocks", "attachments", "files", "metadata")


class SlackError(Exception):
    """An API answer with ok=false; `extra` is merged into the JSON body."""

    def __init__(self, error: str, **extra: Any):
        super().__init__(error)
        self.error, self.extra = error, extra


def _error(error: str, *details: str) -> SlackError:
    """An error with details the way Slack gives them: `errors` and response_metadata.messages."""
    messages = [f"[ERROR] {d}" for d in details]
    return SlackError(error, errors=list(details), response_metadata={"messages": messages})


def _missing(name: str) -> SlackError:
    return _error("invalid_arguments", f"missing required field: {name}")


def _truthy(value: Any) -> bool:
    return value is True or str(value).lower() in ("1", "true")


# ---------------------------------------------------------------- Block Kit checks and rendering


def block_errors(blocks: Any) -> list[str]:
    """Slack-style error strings (with json-pointers) for a blocks array; empty when valid."""
    if not isinstance(blocks, list) or not all(
        isinstance(b, dict) and isinstance(b.get("type"), str) for b in blocks
    ):
        return ["must be an array of objects that each have a type [json-pointer:/blocks]"]
    errors = []
    if len(blocks) > MAX_BLOCKS:
        errors.append(f"no more than {MAX_BLOCKS} items allowed [json-pointer:/blocks]")
    block_ids: set[str] = set()
    action_ids: set[Any] = set()
    for i, block in enumerate(blocks):
        ptr = f"/blocks/{i}"
        if "block_id" in block:
            if block["block_id"] in block_ids:
                errors.append(f"duplicate block_id `{block['block_id']}` [json-pointer:{ptr}]")
            block_ids.add(block["block_id"])
        errors += _block_shape_errors(block, ptr)
        for el_ptr, element in _interactive_elements(block, ptr):
            errors += _element_errors(element, el_ptr)
            action_id = element.get("action_id")
            if action_id is not None and action_id in action_ids:
                errors.append(f"duplicate action_id `{action_id}` [json-pointer:{el_ptr}]")
            action_ids.add(action_id)
    return errors


def _text_errors(obj: Any, ptr: str, limit: int, plain_only: bool = False) -> list[str]:
    kinds = ("plain_text",) if plain_only else ("plain_text", "mrkdwn")
    text = obj.get("text") if isinstance(obj, dict) else None
    if not isinstance(text, str) or obj.get("type") not in kinds:
        return [f"must be a {' or '.join(kinds)} text object [json-pointer:{ptr}]"]
    if len(text) > limit:
        return [f"must be less than {limit + 1} characters [json-pointer:{ptr}/text]"]
    return []


def _block_shape_errors(block: dict, ptr: str) -> list[str]:
    kind = block["type"]
    if kind == "header":
        return _text_errors(block.get("text"), f"{ptr}/text", TEXT_LIMITS["header"], True)
    if kind == "section":
        fields = block.get("fields") or []
        if "text" not in block and not fields:
            return [f"must provide text or fields [json-pointer:{ptr}]"]
        text = block.get("text")
        errors = _text_errors(text, f"{ptr}/text", TEXT_LIMITS["section"]) if text else []
        if len(fields) > MAX_FIELDS:
            errors.append(f"no more than {MAX_FIELDS} items allowed [json-pointer:{ptr}/fields]")
        for j, f in enumerate(fields):
            errors += _text_errors(f, f"{ptr}/fields/{j}", TEXT_LIMITS["field"])
        return errors
    if kind in MAX_ELEMENTS and len(block.get("elements") or []) > MAX_ELEMENTS[kind]:
        return [f"no more than {MAX_ELEMENTS[kind]} items allowed [json-pointer:{ptr}/elements]"]
    return []


def _interactive_elements(block: dict, ptr: str) -> list[tuple[str, dict]]:
    accessory = block.get("accessory")
    found = [(f"{ptr}/accessory", accessory)] if isinstance(accessory, dict) else []
    if block["type"] == "actions":
        found += [(f"{ptr}/elements/{j}", e) for j, e in enumerate(block.get("elements") or [])]
    return found


def _element_errors(element: dict, ptr: str) -> list[str]:
    errors = []
    if element.get("type") == "button":
        errors += _text_errors(element.get("text"), f"{ptr}/text", TEXT_LIMITS["button"], True)
        if len(str(element.get("value", ""))) > 2000:
            errors.append(f"must be less than 2001 characters [json-pointer:{ptr}/value]")
    if len(str(element.get("action_id", ""))) > 255:
        errors.append(f"must be less than 256 characters [json-pointer:{ptr}/action_id]")
    return errors


def _texts(node: Any) -> list[str]:
    """Every `text` string inside a structure, depth first (for unknown block types)."""
    if isinstance(node, list):
        return [t for item in node for t in _texts(item)]
    if not isinstance(node, dict):
        return []
    text = node.get("text")
    own = [text] if isinstance(text, str) else _texts(text)
    return own + [t for k, v in node.items() if k != "text" for t in _texts(v)]


def _render_element(element: dict) -> str:
    label = " ".join(_texts(element.get("text"))) or element.get("alt_text", "")
    if element.get("type") == "button":
        return f"[{label}]({element.get('action_id', '')})"
    return label or " ".join(_texts(element))


def _render_block(block: dict) -> list[str]:
    kind = block.get("type")
    if kind == "divider":
        return ["---"]
    if kind == "section":
        lines = _texts(block.get("text")) + _texts(block.get("fields"))
        if isinstance(block.get("accessory"), dict):
            lines.append(_render_element(block["accessory"]))
        return lines
    if kind in ("context", "actions"):
        return [" ".join(_render_element(e) for e in block.get("elements") or [])]
    if kind == "image":
        return [f"[image: {block.get('alt_text', '')}]"]
    return ["".join(_texts(block))] if kind == "rich_text" else _texts(block)


def render(text: str, blocks: list, attachments: Sequence = (), files: Sequence = ()) -> str:
    """A readable plain-text rendering of a message, for substring assertions."""
    lines = [text] if text else []
    for block in blocks or []:
        lines += _render_block(block)
    for att in attachments or []:
        lines += [att[k] for k in ("pretext", "title", "text") if att.get(k)]
        lines += [t for b in att.get("blocks") or [] for t in _render_block(b)]
    lines += [f"[file {f.name}: {f.title}]" for f in files]
    return "\n".join(line for line in lines if line)


# ---------------------------------------------------------------- recorded objects


@dataclass
class FakeFile:
    id: str
    name: str
    length: int
    title: str = ""
    content: bytes = b""
    uploaded: bool = False
    shares: list[dict] = field(default_factory=list)  # [{"channel", "ts", "thread_ts"}]

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def to_slack(self) -> dict:
        return {"id": self.id, "name": self.name, "title": self.title, "size": len(self.content)}


@dataclass
class Msg:
    channel: str
    ts: str
    user: str
    text: str = ""
    blocks: list = field(default_factory=list)
    attachments: list = field(default_factory=list)
    thread_ts: str | None = None
    files: list[FakeFile] = field(default_factory=list)
    recipient: str | None = None  # set on ephemeral messages: who sees it
    broadcast: bool = False
    deleted: bool = False
    history: list[dict] = field(default_factory=list)  # every version: {"text", "blocks", ...}
    metadata: dict | None = None  # chat.postMessage's `metadata` (event_type, event_payload)

    def __post_init__(self) -> None:
        self.history.append(self._version())

    def _version(self) -> dict:
        return {"text": self.text, "blocks": self.blocks, "attachments": self.attachments}

    @property
    def is_top_level(self) -> bool:
        return self.thread_ts in (None, self.ts) or self.broadcast

    def update(self, text: str | None, blocks: list | None, attachments: list | None) -> None:
        self.text = self.text if text is None else text
        self.blocks = self.blocks if blocks is None else blocks
        self.attachments = self.attachments if attachments is None else attachments
        self.history.append(self._version())

    def plain(self) -> str:
        return render(self.text, self.blocks, self.attachments, self.files)

    def to_slack(self) -> dict:
        out: dict[str, Any] = {"type": "message", "user": self.user, "text": self.text,
                               "ts": self.ts, "blocks": self.blocks,
                               "attachments": self.attachments}
        if self.thread_ts:
            out["thread_ts"] = self.thread_ts
        if len(self.history) > 1:
            out["edited"] = {"user": self.user, "ts": self.ts}
        if self.files:
            out["files"] = [f.to_slack() for f in self.files]
        if self.metadata:
            out["metadata"] = self.metadata
        return {k: v for k, v in out.items() if v != []}

    def to_state(self) -> dict:
        return {**self.to_slack(), "channel": self.channel, "recipient": self.recipient,
                "history": self.history, "plain": self.plain()}


@dataclass
class Response:
    """One POST to a response_url."""

    url: str
    payload: dict
    channel: str
    user: str | None

    @property
    def text(self) -> str:
        return self.payload.get("text", "")

    @property
    def blocks(self) -> list:
        return self.payload.get("blocks") or []

    @property
    def response_type(self) -> str:
        return self.payload.get("response_type", "ephemeral")

    def plain(self) -> str:
        return render(self.text, self.blocks, self.payload.get("attachments") or [])


# ---------------------------------------------------------------- the server


class FakeSlack:
    def __init__(self, token: str = "xoxb-test-token", channels: tuple[str, ...] = ("C0INCIDENT",),
                 bot_user_id: str = "U0BOT", team_id: str = "T0TEST",
                 app_token: str = "xapp-test-token"):
        self.token, self.channels, self.app_token = token, list(channels), app_token
        self.sockets: list[web.WebSocketResponse] = []  # Socket Mode connections
        self.socket_acks: dict[str, dict] = {}  # envelope_id -> what the app acked
        self.bot_user_id, self.team_id, self.bot_id = bot_user_id, team_id, "B0BOT"
        self.calls: list[tuple[str, dict]] = []
        self.rate_limited: list[tuple[str, dict]] = []  # the calls that got a 429
        self.all_messages: list[Msg] = []  # channel messages and thread replies, in posting order
        self.ephemerals: list[Msg] = []
        self.responses: list[Response] = []
        self.files: list[FakeFile] = []
        self.usergroups: dict[str, list[str]] = {}  # usergroup ID (S…) -> member user IDs
        self.root = ""  # "http://host:port/" once started
        self._limits: dict[str, list[int]] = {}  # method -> [calls left to refuse, retry_after]
        self._pace: tuple[float, int, int] | None = None  # see enforce_rate_limits
        self._post_tat: dict[str, float] = {}  # channel -> when its next post is due (GCRA)
        self._updates: list[float] = []  # loop times of chat.update calls in the last minute
        self._response_urls: dict[str, tuple[str, str | None, str | None]] = {}
        self._seq = 0
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._outage: tuple[str, float] | None = None  # (mode, loop time it ends)
        self._lose: dict[str, int] = {}  # method -> answers to lose after doing the call
        self.outage_answers: list[tuple[str, int]] = []  # (method, HTTP status) during outages

    # -- lifecycle

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/api/{method}", self._api)
        app.router.add_post("/_fake/upload/{file_id}", self._upload)
        app.router.add_post("/_fake/respond/{n}", self._respond)
        app.router.add_get("/_fake/state", self._state)
        app.router.add_get("/_fake/socket", self._socket)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        self._site = site
        bound_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.root = f"http://{host}:{bound_port}/"
        return self.base_url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def base_url(self) -> str:
        return f"{self.root}api/"

    # -- test controls and views

    def enforce_rate_limits(self, post_interval: float = 1.0, post_burst: int = 3,
                            updates_per_minute: int = 50, slack: float = 0.05) -> None:
        """Refuse (HTTP 429 + Retry-After) what Slack's rate limits refuse: chat.postMessage
        faster than one every `post_interval` seconds per channel after a burst of `post_burst`
        (Slack: about one a second per channel, short bursts allowed), and more than
        `updates_per_minute` chat.update calls in any 60 seconds (Tier 3). `slack`: timing
        jitter forgiven, in seconds."""
        self._pace = (post_interval - slack, post_burst, updates_per_minute)

    def _rate_wait(self, method: str, params: dict) -> float:
        """Seconds the caller must wait before this call is accepted; 0: accepted now."""
        if self._pace is None:
            return 0.0
        interval, burst, per_minute = self._pace
        now = asyncio.get_running_loop().time()
        if method == "chat.postMessage":  # GCRA: a burst, then one per interval
            channel = str(params.get("channel", ""))
            tat = max(self._post_tat.get(channel, now), now)
            allowed_at = tat - (burst - 1) * interval
            if now < allowed_at:
                return allowed_at - now
            self._post_tat[channel] = tat + interval
        elif method == "chat.update":
            self._updates = [t for t in self._updates if now - t < 60.0]
            if len(self._updates) >= per_minute:
                return 60.0 - (now - self._updates[0])
            self._updates.append(now)
        return 0.0

    def rate_limit(self, method: str, times: int, retry_after: int = 1) -> None:
        """Answer the next `times` calls of `method` with HTTP 429 and Retry-After."""
        self._limits[method] = [times, retry_after]

    def outage(self, seconds: float, mode: str = "503") -> None:
        """Slack is down for `seconds`: every Web API call answers HTTP 503 (mode "503", as a
        load balancer in front of Slack does, body not JSON) or 429 with Retry-After 1 ("429")."""
        self._outage = (mode, asyncio.get_running_loop().time() + seconds)

    async def refuse_connections(self, seconds: float) -> None:
        """Stop listening (connections are refused, open ones are closed) for `seconds`,
        then listen again on the same address. Returns at once."""
        assert self._site is not None and self._runner is not None
        host, port = self.root.split("://", 1)[1].rstrip("/").rsplit(":", 1)
        await self._site.stop()
        server = self._runner.server
        for handler in list(getattr(server, "connections", [])):
            handler.force_close()
            if handler.transport is not None:
                handler.transport.close()

        async def reopen() -> None:
            await asyncio.sleep(seconds)
            assert self._runner is not None
            self._site = web.TCPSite(self._runner, host, int(port))
            await self._site.start()

        self._reopen = asyncio.create_task(reopen())

    def lose_answers(self, method: str, times: int) -> None:
        """Do the next `times` calls of `method`, then drop the connection instead of
        answering (the caller cannot know whether it was done)."""
        self._lose[method] = times

    def response_url(self, channel: str | None = None, user: str | None = None,
                     message_ts: str | None = None, *, name: str | None = None) -> str:
        """A fresh response_url (`name`: its last part, else a number);
        replace_original/delete_original act on `message_ts`."""
        url = f"{self.root}_fake/respond/{name or len(self._response_urls) + 1}"
        self._response_urls[url] = (channel or self.channels[0], user, message_ts)
        return url

    def messages(self, channel: str) -> list[Msg]:
        return [m for m in self.all_messages
                if m.channel == channel and m.is_top_level and not m.deleted]

    def thread(self, channel: str, ts: str) -> list[Msg]:
        return [m for m in self.all_messages
                if m.channel == channel and m.thread_ts == ts and m.ts != ts and not m.deleted]

    def message(self, channel: str, ts: str) -> Msg | None:
        return next((m for m in self.all_messages if m.channel == channel and m.ts == ts), None)

    def post_as_user(self, channel: str, user: str, text: str, thread_ts: str | None = None) -> Msg:
        """Put a message from a human in the channel (the bot cannot update or delete it)."""
        return self._store(Msg(channel, self._next_ts(), user, text, thread_ts=thread_ts))

    async def wait_for(self, predicate: Callable[[FakeSlack], Any], timeout: float = 30) -> Any:  # noqa: ASYNC109
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not (result := predicate(self)):
            if loop.time() > deadline:
                raise AssertionError(f"fake Slack: condition not met in {timeout}s; state:\n"
                                     + json.dumps(self.state(), indent=1)[:4000])
            await asyncio.sleep(0.02)
        return result

    def state(self) -> dict:
        def with_replies(m: Msg) -> dict:
            return {**m.to_state(), "replies": [r.to_state() for r in self.thread(m.channel, m.ts)]}

        return {
            "channels": {c: [with_replies(m) for m in self.messages(c)] for c in self.channels},
            "ephemerals": [m.to_state() for m in self.ephemerals],
            "responses": [{**asdict(r), "plain": r.plain()} for r in self.responses],
            "files": [{**f.to_slack(), "text": f.text} for f in self.files],
            "calls": [list(c) for c in self.calls],
            "rate_limited": [list(c) for c in self.rate_limited],
        }

    # -- HTTP handlers

    # -- Socket Mode: apps.connections.open hands out this websocket

    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.sockets.append(ws)
        await ws.send_json({"type": "hello", "num_connections": len(self.sockets),
                            "debug_info": {"host": "fakeslack"},
                            "connection_info": {"app_id": "A0TEST"}})
        try:
            async for frame in ws:
                if frame.type == web.WSMsgType.TEXT:
                    data = json.loads(frame.data)
                    if "envelope_id" in data:
                        self.socket_acks[data["envelope_id"]] = data
        finally:
            self.sockets.remove(ws)
        return ws

    async def socket_send(self, kind: str, payload: dict) -> str:
        """Deliver an envelope (`slash_commands`, `interactive`, `events_api`) over Socket Mode
        as Slack does; returns its envelope_id (the app's ack lands in `socket_acks`)."""
        await self.wait_for(lambda fake: fake.sockets, timeout=15)
        self._seq += 1
        envelope_id = f"env-{self._seq}"
        await self.sockets[-1].send_json({
            "envelope_id": envelope_id, "type": kind, "payload": payload,
            "accepts_response_payload": kind != "events_api", "retry_attempt": 0,
            "retry_reason": ""})
        return envelope_id

    def _connections_open(self, p: dict) -> dict:
        return {"url": f"ws://{self.root.split('://', 1)[1]}_fake/socket"}

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        try:
            params, token = await _read_params(request)
        except ValueError:
            return web.json_response({"ok": False, "error": "invalid_json"})
        if self._outage is not None:
            mode, until = self._outage
            if asyncio.get_running_loop().time() < until:
                status = 429 if mode == "429" else 503
                self.outage_answers.append((method, status))
                if status == 429:
                    return web.json_response({"ok": False, "error": "ratelimited"}, status=429,
                                             headers={"Retry-After": "1"})
                return web.Response(status=503, text="<html><body>503 Service Unavailable"
                                    "</body></html>", content_type="text/html")
            self._outage = None
        self.calls.append((method, params))
        wait = self._rate_wait(method, params)
        if wait > 0:
            self.rate_limited.append((method, params))
            return web.json_response({"ok": False, "error": "ratelimited"}, status=429,
                                     headers={"Retry-After": str(max(1, math.ceil(wait)))})
        limit = self._limits.get(method)
        if limit and limit[0] > 0:
            limit[0] -= 1
            self.rate_limited.append((method, params))
            return web.json_response({"ok": False, "error": "ratelimited"}, status=429,
                                     headers={"Retry-After": str(limit[1])})
        handler = self.METHODS.get(method)
        if handler is None:
            return web.json_response({"ok": False, "error": "unknown_method", "req_method": method},
                                     status=404)
        try:
            if not token:
                raise SlackError("not_authed")
            if token != (self.app_token if method == "apps.connections.open" else self.token):
                raise SlackError("invalid_auth")
            body = {"ok": True, **handler(self, params)}
        except SlackError as e:
            body = {"ok": False, "error": e.error, **e.extra}
        if self._lose.get(method, 0) > 0:
            self._lose[method] -= 1
            if request.transport is not None:
                request.transport.abort()
        return web.json_response(body)

    async def _upload(self, request: web.Request) -> web.Response:
        file = self._file(request.match_info["file_id"])
        if request.content_type.startswith("multipart/"):
            part = await (await request.multipart()).next()
            file.content = await part.read() if part is not None else b""  # type: ignore[union-attr]
        else:
            file.content = await request.read()
        file.uploaded = True
        return web.Response(text=f"OK - {len(file.content)}", content_type="text/plain")

    async def _respond(self, request: web.Request) -> web.Response:
        url = f"{self.root}_fake/respond/{request.match_info['n']}"
        if url not in self._response_urls:
            return web.json_response({"ok": False, "error": "expired_url"}, status=404)
        channel, user, message_ts = self._response_urls[url]
        try:
            payload = await request.json()
            blocks = _parse_blocks(payload.get("blocks"))
        except ValueError:
            return web.json_response({"ok": False, "error": "invalid_payload"}, status=400)
        except SlackError as e:
            return web.json_response({"ok": False, "error": e.error, **e.extra}, status=400)
        self.responses.append(Response(url, payload, channel, user))
        text, attachments = payload.get("text", ""), payload.get("attachments") or []
        original = self.message(channel, message_ts) if message_ts else None
        if original and _truthy(payload.get("delete_original")):
            original.deleted = True
        elif original and _truthy(payload.get("replace_original")):
            original.update(text, blocks or [], attachments)
        else:
            msg = Msg(channel, self._next_ts(), self.bot_user_id, text, blocks or [], attachments,
                      thread_ts=payload.get("thread_ts"))
            if payload.get("response_type") == "in_channel":
                self._store(msg)
            else:
                msg.recipient = user
                self.ephemerals.append(msg)
        return web.json_response({"ok": True})

    async def _state(self, request: web.Request) -> web.Response:
        return web.json_response(self.state())

    # -- helpers shared by the methods

    def _next_ts(self) -> str:
        self._seq += 1
        micros = self._seq * 100
        return f"{1_700_000_000 + micros // 1_000_000}.{micros % 1_000_000:06d}"

    def _store(self, msg: Msg) -> Msg:
        self.all_messages.append(msg)
        return msg

    def _channel(self, params: dict) -> str:
        channel = params.get("channel")
        if channel not in self.channels:
            raise SlackError("channel_not_found")
        return channel

    def _find(self, params: dict) -> Msg:
        msg = self.message(self._channel(params), str(params.get("ts", "")))
        if msg is None or msg.deleted:
            raise SlackError("message_not_found")
        return msg

    def _file(self, file_id: str) -> FakeFile:
        file = next((f for f in self.files if f.id == file_id), None)
        if file is None:
            raise web.HTTPNotFound(text="file_not_found")
        return file

    # -- the Web API methods: each takes the params and returns the body beyond {"ok": true}

    def _auth_test(self, p: dict) -> dict:
        return {"url": "https://fake-team.slack.com/", "team": "Fake Team", "user": "opsbot",
                "team_id": self.team_id, "user_id": self.bot_user_id, "bot_id": self.bot_id,
                "is_enterprise_install": False}

    def _post_message(self, p: dict) -> dict:
        channel = self._channel(p)
        text, blocks, attachments = _content(p, required=True)
        metadata = p.get("metadata") if isinstance(p.get("metadata"), dict) else None
        msg = self._store(Msg(channel, self._next_ts(), self.bot_user_id, text or "", blocks or [],
                              attachments or [], thread_ts=_thread_ts(p),
                              broadcast=_truthy(p.get("reply_broadcast")), metadata=metadata))
        return {"channel": channel, "ts": msg.ts, "message": msg.to_slack()}

    def _update(self, p: dict) -> dict:
        msg = self._find(p)
        if msg.user != self.bot_user_id:
            raise SlackError("cant_update_message")
        msg.update(*_content(p, required=True))
        return {"channel": msg.channel, "ts": msg.ts, "text": msg.text, "message": msg.to_slack()}

    def _delete(self, p: dict) -> dict:
        msg = self._find(p)
        if msg.user != self.bot_user_id:
            raise SlackError("cant_delete_message")
        msg.deleted = True
        return {"channel": msg.channel, "ts": msg.ts}

    def _post_ephemeral(self, p: dict) -> dict:
        channel = self._channel(p)
        if not p.get("user"):
            raise _missing("user")
        text, blocks, attachments = _content(p, required=True)
        msg = Msg(channel, self._next_ts(), self.bot_user_id, text or "", blocks or [],
                  attachments or [], thread_ts=_thread_ts(p), recipient=p["user"])
        self.ephemerals.append(msg)
        return {"message_ts": msg.ts}

    def _history(self, p: dict) -> dict:
        channel = self._channel(p)
        newest_first = [m for m in reversed(self.messages(channel))
                        if float(p.get("oldest", 0)) < float(m.ts) < float(p.get("latest", "inf"))]
        return self._page(newest_first, p, channel)

    def _replies(self, p: dict) -> dict:
        channel = self._channel(p)
        parent = self.message(channel, str(p.get("ts", "")))
        if parent is None or parent.deleted:
            raise SlackError("thread_not_found")
        return self._page([parent, *self.thread(channel, parent.ts)], p, channel)

    def _page(self, msgs: list[Msg], p: dict, channel: str) -> dict:
        limit = int(p.get("limit") or 100)
        out = []
        for m in msgs[:limit]:
            out.append(m.to_slack())
            if replies := self.thread(channel, m.ts):
                out[-1].update(thread_ts=m.ts, reply_count=len(replies),
                               latest_reply=replies[-1].ts)
        return {"messages": out, "has_more": len(msgs) > limit}

    def _users_info(self, p: dict) -> dict:
        user = p.get("user")
        if not user:
            raise SlackError("user_not_found")
        name = f"user-{user}"
        return {"user": {"id": user, "team_id": self.team_id, "name": name, "real_name": name,
                         "is_bot": user == self.bot_user_id, "tz": "UTC",
                         "profile": {"display_name": name, "real_name": name}}}

    def _usergroup_users(self, p: dict) -> dict:
        group = p.get("usergroup")
        if not group:
            raise _missing("usergroup")
        if group not in self.usergroups:
            raise SlackError("no_such_subteam")
        return {"users": list(self.usergroups[group])}

    def _get_upload_url(self, p: dict) -> dict:
        if not p.get("filename"):
            raise _missing("filename")
        if not str(p.get("length", "")).isdigit():
            raise _missing("length")
        file = FakeFile(f"F{len(self.files) + 1:010d}", str(p["filename"]), int(p["length"]))
        self.files.append(file)
        return {"upload_url": f"{self.root}_fake/upload/{file.id}", "file_id": file.id}

    def _complete_upload(self, p: dict) -> dict:
        entries = p.get("files")
        if not isinstance(entries, list) or not entries:
            raise _missing("files")
        known = {f.id: f for f in self.files}
        if any(not isinstance(e, dict) or e.get("id") not in known for e in entries):
            raise SlackError("file_not_found")
        files = [known[e["id"]] for e in entries]
        for file, entry in zip(files, entries, strict=True):
            file.title = entry.get("title") or file.name
        channels = p.get("channel_id") or p.get("channels", "")
        for channel in filter(None, str(channels).split(",")):
            self._channel({"channel": channel})
            msg = self._store(Msg(channel, self._next_ts(), self.bot_user_id,
                                  str(p.get("initial_comment", "")), thread_ts=_thread_ts(p),
                                  files=files))
            for file in files:
                file.shares.append({"channel": channel, "ts": msg.ts, "thread_ts": msg.thread_ts})
        return {"files": [f.to_slack() for f in files]}

    METHODS: dict[str, Callable[[FakeSlack, dict], dict]] = {
        "auth.test": _auth_test,
        "apps.connections.open": _connections_open,
        "chat.postMessage": _post_message,
        "chat.update": _update,
        "chat.delete": _delete,
        "chat.postEphemeral": _post_ephemeral,
        "conversations.history": _history,
        "conversations.replies": _replies,
        "users.info": _users_info,
        "usergroups.users.list": _usergroup_users,
        "files.getUploadURLExternal": _get_upload_url,
        "files.completeUploadExternal": _complete_upload,
    }


# ---------------------------------------------------------------- request parsing


async def _read_params(request: web.Request) -> tuple[dict, str | None]:
    """Query string + JSON or form body, JSON-in-a-string fields decoded; the token taken out."""
    params: dict[str, Any] = dict(request.query)
    if request.content_type == "application/json":
        params.update(await request.json())
    elif request.method == "POST":
        params.update({k: v for k, v in (await request.post()).items() if isinstance(v, str)})
    for name in JSON_PARAMS:
        if isinstance(params.get(name), str):
            try:
                params[name] = json.loads(params[name])
            except ValueError:
                pass  # left as a string: the method reports it
    header = request.headers.get("Authorization", "")
    token = header[len("Bearer "):] if header.startswith("Bearer ") else None
    return params, params.pop("token", None) or token


def _parse_blocks(raw: Any) -> list | None:
    if raw is None:
        return None
    if isinstance(raw, str):
        raise SlackError("invalid_blocks_format")
    errors = block_errors(raw)
    if errors:
        raise _error("invalid_blocks", *errors)
    return raw


def _content(p: dict, required: bool) -> tuple[str | None, list | None, list | None]:
    text = p.get("text")
    if text is not None and len(str(text)) > MAX_TEXT:
        raise SlackError("msg_too_long")
    blocks = _parse_blocks(p.get("blocks"))
    attachments = p.get("attachments")
    if attachments is not None and not isinstance(attachments, list):
        raise SlackError("invalid_attachments")
    if required and not text and not blocks and not attachments:
        raise SlackError("no_text")
    return (None if text is None else str(text)), blocks, attachments


def _thread_ts(p: dict) -> str | None:
    ts = p.get("thread_ts")
    if ts is None:
        return None
    try:
        valid = float(ts) > 0
    except ValueError:
        valid = False
    if not valid:
        raise _error("invalid_thread_ts", f"{ts} is not a valid thread_ts")
    return str(ts)


async def _serve(args: argparse.Namespace) -> None:
    fake = FakeSlack(token=args.token, channels=tuple(args.channel or ["C0INCIDENT"]))
    print(await fake.start(args.host, args.port), flush=True)
    for name in args.response_url or ():
        fake.response_url(name=name)
    try:
        await asyncio.Event().wait()
    finally:
        await fake.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve a fake Slack Web API.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3001)
    parser.add_argument("--channel", action="append", help="existing channel ID (repeatable)")
    parser.add_argument("--token", default="xoxb-test-token")
    parser.add_argument("--response-url", action="append", metavar="NAME",
                        help="answer at /_fake/respond/NAME as a response_url (repeatable)")
    try:
        asyncio.run(_serve(parser.parse_args()))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
