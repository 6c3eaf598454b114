"""Hostile input against a running bot: every case gets one line and a 4xx (or a clear
ephemeral answer), never a 5xx or a traceback; bodies are read whole and within time."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from bot import edge
from tests.botfixtures import ALERT_TOKEN, SIGNING_SECRET, RunningBot, alert_payload
from tests.slacksign import sign, slash_command_body

DEEP = b"[" * 100_000 + b"]" * 100_000
HUGE_INT = b"9" * 5000
SURROGATE = b'"\\ud800"'


def one_line(text: str) -> None:
    assert "\n" not in text.strip() and "Traceback" not in text, text


async def raw_http(bot: RunningBot, request: bytes, *, pause: float = 0.0,
                   pieces: int = 1) -> tuple[int, str]:
    """Send bytes as they are (no client library to tidy them), in `pieces` packets."""
    host, port = bot.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    size = -(-len(request) // pieces)
    for i in range(0, len(request), size):
        writer.write(request[i:i + size])
        await writer.drain()
        if pause:
            await asyncio.sleep(pause)
    answer = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode("utf-8", "replace")


def alert_request(body: bytes, auth: bytes = b"Bearer " + ALERT_TOKEN.encode()) -> bytes:
    return (b"POST /alerts/alertmanager HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Content-Type: application/json\r\nAuthorization: " + auth + b"\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


async def test_hostile_alert_bodies_get_one_line_4xx(light_bot: RunningBot,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    bot = light_bot
    caplog.set_level(logging.WARNING)
    cases = [
        (b'{"alerts": ' + HUGE_INT + b"}", 400, "cannot be read"),
        (b'{"alerts": [{"labels": {"a": ' + SURROGATE + b"}}]}", 400, "surrogate"),
        (DEEP, 400, "nested too deeply"),
        (b"\xff\xfe{}", 400, "not UTF-8"),
        (b"[1, 2]", 400, "JSON object"),
        (json.dumps({"alerts": [{"labels": {"a": [1]}}]}).encode(), 400, "must be a string"),
        (b"", 400, "not valid JSON"),
    ]
    for body, status, words in cases:
        got, answer = await bot.post_alert(None, raw=body)
        assert got == status and words in answer["error"], (body[:40], answer)
        one_line(answer["error"])
    got, text = await raw_http(bot, alert_request(b"{}", auth=b"Bearer \xff" + b"x" * 10))
    assert got == 401 and "bearer token" in text
    one_line(text)
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


async def test_a_chunked_200_kb_alert_in_many_packets_is_accepted(light_bot: RunningBot) -> None:
    bot = light_bot
    payload = alert_payload(host="edge09", extra_labels={"padding": "x" * 200_000})
    body = json.dumps(payload).encode()
    assert len(body) > 200_000

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(body), 4096):
            yield body[i:i + 4096]
            if i % (16 * 4096) == 0:
                await asyncio.sleep(0.01)  # separate packets, as a slow link delivers them

    async with bot.session.post(f"{bot.url}/alerts/alertmanager", data=chunks(),
                                headers={"Authorization": f"Bearer {ALERT_TOKEN}",
                                         "Content-Type": "application/json"}) as resp:
        assert resp.request_info.headers.get("Transfer-Encoding") == "chunked"
        answer = await resp.json()
        assert resp.status == 200, answer
    incident = await bot.wait(lambda: bot.store().list_incidents())
    assert incident[0].labels["padding"] == "x" * 200_000


async def test_bodies_over_the_limit_or_too_slow_are_refused(
        light_bot: RunningBot, monkeypatch: pytest.MonkeyPatch) -> None:
    bot = light_bot
    big = b" " * (edge.MAX_BODY + 1)

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it arrives
        for i in range(0, len(big), 65536):
            yield big[i:i + 65536]

    async with bot.session.post(f"{bot.url}/alerts/alertmanager", data=chunks(),
                                headers={"Authorization": f"Bearer {ALERT_TOKEN}"}) as resp:
        assert resp.status == 413
        one_line((await resp.json())["error"])
    monkeypatch.setattr(edge, "BODY_TIMEOUT", 0.5)
    if bot.env["OPSBOT_EDGE"] == "process":
        await bot.restart()  # an edge process takes the limits when it starts
    started = time.monotonic()
    status, text = await raw_http(bot, alert_request(json.dumps(alert_payload()).encode()),
                                  pieces=4, pause=0.4)
    assert status == 408 and "did not arrive in time" in text
    assert time.monotonic() - started < 5


def slack_headers(body: bytes, **over: str) -> dict[str, str]:
    return {**sign(SIGNING_SECRET, body), **over}


async def slack_post(bot: RunningBot, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
    async with bot.session.post(f"{bot.url}/slack/events", data=body, headers=headers) as resp:
        return resp.status, await resp.text()


async def test_hostile_slack_requests_get_one_line_4xx(light_bot: RunningBot,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    bot = light_bot
    caplog.set_level(logging.WARNING)
    form = slash_command_body("help")
    payload_form = b"payload=%7Bnot+json"
    signed_array = b"[1,2,3]"
    cases: list[tuple[bytes, dict[str, str], int, str]] = [
        (form, slack_headers(form, **{"X-Slack-Request-Timestamp": "abc"}), 401, "Timestamp"),
        (form, slack_headers(form, **{"X-Slack-Signature": "v0=ü" + "0" * 63}), 401,
         "Signature"),
        (form, {"Content-Type": "application/x-www-form-urlencoded"}, 401, "Timestamp"),
        (payload_form, {"Content-Type": "application/x-www-form-urlencoded"}, 401, "Timestamp"),
        (payload_form, slack_headers(payload_form), 400, "payload is not valid JSON"),
        (signed_array, slack_headers(signed_array, **{"Content-Type": "application/json"}), 400,
         "JSON object"),
        (b'{"a": ' + HUGE_INT + b"}", slack_headers(b'{"a": ' + HUGE_INT + b"}"), 400,
         "cannot be read"),
        (b'{"a": ' + SURROGATE + b"}", slack_headers(b'{"a": ' + SURROGATE + b"}"), 400,
         "surrogate"),
        (b"{" + DEEP, slack_headers(b"{" + DEEP), 400, "JSON"),
        (b"\xff=\xfe", slack_headers(b"\xff=\xfe"), 400, "not UTF-8"),
    ]
    for body, headers, status, words in cases:
        got, text = await slack_post(bot, body, headers)
        assert got == status and words in text, (body[:40], headers, text)
        one_line(text)
    # a \xff byte in a Slack header, sent raw
    raw = (b"POST /slack/events HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
           b"X-Slack-Request-Timestamp: 1\xff\r\nX-Slack-Signature: v0=\xff\r\n"
           b"Content-Length: 2\r\n\r\n{}")
    got, text = await raw_http(bot, raw)
    assert got == 401
    one_line(text)
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


async def answer_of(bot: RunningBot, body: bytes) -> tuple[int, Any]:
    status, text = await bot.slack_request(body)
    return status, json.loads(text)["text"] if text else ""


async def test_odd_signed_slack_payloads_get_clear_answers(light_bot: RunningBot) -> None:
    bot = light_bot
    no_user = b"&".join(p for p in slash_command_body("help").split(b"&")
                        if not p.startswith(b"user_id="))
    status, text = await answer_of(bot, no_user)
    assert status == 200 and "names no user" in text
    for ref in ("INC-²", "INC-99999999999999999999", "INC-", "٣"):
        status, text = await answer_of(bot, slash_command_body(f"status {ref}"))
        assert status == 200 and "is not an incident reference" in text, ref
        one_line(text)
    status, text = await answer_of(bot, slash_command_body("status " + "x" * 3000))
    assert status == 200 and "at most 2000" in text
    status, text = await answer_of(bot, slash_command_body('run "unclosed'))
    assert status == 200 and "Could not read that" in text
    no_actions = json.dumps({"type": "block_actions", "user": {"id": "U0ALICE"},
                             "actions": []}).encode()
    status, text = await bot.slack_request(no_actions)
    assert status == 400 and "carries no actions" in text
    assert bot.store().list_incidents() == []


@pytest.fixture
def short_header_timeout(monkeypatch: pytest.MonkeyPatch) -> float:
    monkeypatch.setattr(edge, "HEADER_TIMEOUT", 1.0)
    return 1.0


async def test_a_client_that_never_finishes_its_headers_is_dropped(
        short_header_timeout: float, light_bot: RunningBot) -> None:
    host, port = light_bot.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"POST /alerts/alertmanager HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    await writer.drain()
    started = time.monotonic()
    assert await asyncio.wait_for(reader.read(), 30) == b""  # closed by the bot
    assert time.monotonic() - started < short_header_timeout + 5
    writer.close()
    # the bot still answers everyone else
    async with light_bot.session.get(f"{light_bot.url}/healthz") as resp:
        assert resp.status == 200


@pytest.mark.bot_env(OPSBOT_METRICS_TOKEN="metrics-token")
async def test_health_is_read_only_and_terse_and_metrics_need_the_token(
        light_bot: RunningBot) -> None:
    bot = light_bot

    def snapshot() -> list[Any]:  # but the serving heartbeat, renewed every second anyway
        db = bot.store().db
        return [list(db.query("SELECT * FROM meta WHERE key <> 'serving' ORDER BY key")),
                list(db.query("SELECT count(*) AS n FROM audit")),
                (bot.settings.db.stat().st_mtime_ns, bot.settings.db.stat().st_size)]

    before = snapshot()
    for _ in range(5):
        async with bot.session.get(f"{bot.url}/healthz") as resp:
            assert resp.status == 200 and await resp.json() == {"status": "ok", "slack": "http"}
    async with bot.session.get(f"{bot.url}/healthz",
                               headers={"Authorization": "Bearer metrics-token"}) as resp:
        detail = await resp.json()
    assert detail["runbooks"] and detail["hosts"] == 1 and detail["store"] == "ok"
    assert str(bot.settings.db) not in json.dumps(detail)
    assert snapshot() == before  # nothing written
    for auth in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Bearer \xff"}):
        async with bot.session.get(f"{bot.url}/metrics", headers=auth) as resp:
            assert resp.status == 401 and "OPSBOT_METRICS_TOKEN" in (await resp.json())["error"]
    async with bot.session.get(f"{bot.url}/metrics",
                               headers={"Authorization": "Bearer metrics-token"}) as resp:
        assert resp.status == 200 and "opsbot_incidents_open 0" in await resp.text()


async def test_a_replay_is_refused_across_a_restart(light_bot: RunningBot) -> None:
    bot = light_bot
    body = slash_command_body("incidents")
    signed_at = int(time.time())
    status, _ = await bot.slack_request(body, timestamp=signed_at)
    assert status == 200
    await bot.restart()  # the signatures seen live in the database, not in the process
    status, text = await bot.slack_request(body, timestamp=signed_at)
    assert status == 401 and "replay" in text
    status, _ = await bot.slack_request(body, timestamp=signed_at + 1)  # newly signed: fine
    assert status == 200
    refused = [r for r in bot.store().audit_records() if r["action"] == "slack.replay_refused"]
    assert len(refused) == 1
