"""The fake Slack Web API behaves like Slack for the real slack_sdk client."""

from __future__ import annotations

import json
import time
from urllib.parse import parse_qs

import aiohttp
import pytest
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.signature import SignatureVerifier
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.webhook.async_client import AsyncWebhookClient

from tests.fakeslack import FakeSlack
from tests.slacksign import block_actions_body, click_body, sign, slash_command_body

TOKEN = "xoxb-test-token"
CHANNEL = "C0INCIDENT"


@pytest.fixture
async def fake():
    server = FakeSlack()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def client(fake: FakeSlack) -> AsyncWebClient:
    return AsyncWebClient(token=TOKEN, base_url=fake.base_url)


def section(text: str) -> dict:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


def button(text: str, action_id: str, value: str = "v") -> dict:
    return {
        "type": "button",
        "text": {"type": "plain_text", "text": text},
        "action_id": action_id,
        "value": value,
    }


def approval_blocks() -> list[dict]:
    return [
        {"type": "header", "text": {"type": "plain_text", "text": "INC-1: 502 on web1"}},
        section("*Step* restart nginx"),
        {"type": "context", "elements": [{"type": "mrkdwn", "text": "host web1"}]},
        {
            "type": "actions",
            "block_id": "decide",
            "elements": [
                button("Approve", "opsbot.approve", "tok-1"),
                button("Reject", "opsbot.reject", "tok-1"),
            ],
        },
    ]


async def test_start_returns_api_base_url(fake: FakeSlack, client: AsyncWebClient):
    assert fake.base_url.startswith("http://127.0.0.1:") and fake.base_url.endswith("/api/")
    auth = await client.auth_test()
    assert (auth["user_id"], auth["team_id"], auth["bot_id"]) == ("U0BOT", "T0TEST", "B0BOT")


async def test_post_reply_update_are_visible(fake: FakeSlack, client: AsyncWebClient):
    root = await client.chat_postMessage(
        channel=CHANNEL, text="INC-1 opened", blocks=approval_blocks()
    )
    reply = await client.chat_postMessage(channel=CHANNEL, thread_ts=root["ts"], text="step 1 ok")
    await client.chat_update(
        channel=CHANNEL,
        ts=root["ts"],
        text="INC-1 resolved",
        blocks=[section("*Resolved* by <@U0ALICE>")],
    )

    assert float(reply["ts"]) > float(root["ts"])
    assert root["message"]["text"] == "INC-1 opened"
    [msg] = fake.messages(CHANNEL)
    assert msg.ts == root["ts"] and msg.text == "INC-1 resolved"
    assert "Resolved" in msg.plain() and "Approve" not in msg.plain()
    assert len(msg.history) == 2
    first = msg.history[0]
    assert first["text"] == "INC-1 opened" and first["blocks"][3]["elements"][0]["value"] == "tok-1"
    assert [m.text for m in fake.thread(CHANNEL, root["ts"])] == ["step 1 ok"]
    assert fake.calls[0][0] == "chat.postMessage" and "token" not in fake.calls[0][1]


async def test_plain_renders_blocks(fake: FakeSlack, client: AsyncWebClient):
    await client.chat_postMessage(channel=CHANNEL, text="fallback", blocks=approval_blocks())
    plain = fake.messages(CHANNEL)[0].plain()
    for part in (
        "fallback",
        "INC-1: 502 on web1",
        "*Step* restart nginx",
        "host web1",
        "[Approve](opsbot.approve)",
        "[Reject](opsbot.reject)",
    ):
        assert part in plain


async def test_update_keeps_blocks_when_only_text_given(fake: FakeSlack, client: AsyncWebClient):
    root = await client.chat_postMessage(channel=CHANNEL, text="a", blocks=[section("body")])
    await client.chat_update(channel=CHANNEL, ts=root["ts"], text="b")
    msg = fake.messages(CHANNEL)[0]
    assert msg.text == "b" and msg.blocks == [section("body")]


async def test_history_and_replies(fake: FakeSlack, client: AsyncWebClient):
    one = await client.chat_postMessage(channel=CHANNEL, text="one")
    await client.chat_postMessage(channel=CHANNEL, text="two")
    await client.chat_postMessage(channel=CHANNEL, text="reply", thread_ts=one["ts"])
    history = await client.conversations_history(channel=CHANNEL)
    assert [m["text"] for m in history["messages"]] == ["two", "one"]
    assert history["messages"][1]["reply_count"] == 1
    replies = await client.conversations_replies(channel=CHANNEL, ts=one["ts"])
    assert [m["text"] for m in replies["messages"]] == ["one", "reply"]


@pytest.mark.parametrize(
    "call, error",
    [
        (lambda c: c.chat_postMessage(channel="C0NOPE", text="x"), "channel_not_found"),
        (lambda c: c.api_call("chat.postMessage", json={"channel": CHANNEL}), "no_text"),
        (lambda c: c.chat_postMessage(channel=CHANNEL, text="x" * 40_001), "msg_too_long"),
        (lambda c: c.chat_update(channel=CHANNEL, ts="1.000001", text="x"), "message_not_found"),
        (
            lambda c: c.chat_postMessage(channel=CHANNEL, text="x", thread_ts="0"),
            "invalid_thread_ts",
        ),
        (lambda c: c.conversations_replies(channel=CHANNEL, ts="1.000001"), "thread_not_found"),
        (
            lambda c: c.api_call("chat.postEphemeral", json={"channel": CHANNEL, "text": "x"}),
            "invalid_arguments",
        ),
    ],
)
async def test_errors(client: AsyncWebClient, call, error):
    with pytest.raises(SlackApiError) as info:
        await call(client)
    assert info.value.response["error"] == error


async def test_auth_errors(fake: FakeSlack):
    wrong = AsyncWebClient(token="xoxb-wrong", base_url=fake.base_url)
    with pytest.raises(SlackApiError) as info:
        await wrong.chat_postMessage(channel=CHANNEL, text="x")
    assert info.value.response["error"] == "invalid_auth"
    with pytest.raises(SlackApiError) as info:
        await AsyncWebClient(base_url=fake.base_url).auth_test()
    assert info.value.response["error"] == "not_authed"
    assert fake.messages(CHANNEL) == []


async def test_token_in_form_field_and_unknown_method(fake: FakeSlack):
    async with aiohttp.ClientSession() as http:
        async with http.post(fake.base_url + "auth.test", data={"token": TOKEN}) as resp:
            assert (await resp.json())["ok"] is True
        async with http.post(fake.base_url + "chat.nothing", data={"token": TOKEN}) as resp:
            assert resp.status == 404
            assert (await resp.json())["error"] == "unknown_method"


BAD_BLOCKS = {
    "51 blocks": [section(f"s{i}") for i in range(51)],
    "3001-char section": [section("x" * 3001)],
    "151-char header": [{"type": "header", "text": {"type": "plain_text", "text": "h" * 151}}],
    "76-char button": [{"type": "actions", "elements": [button("b" * 76, "a")]}],
    "duplicate action_id": [
        {"type": "actions", "elements": [button("A", "same"), button("B", "same")]}
    ],
    "no type": [{"text": {"type": "mrkdwn", "text": "x"}}],
    "not a list": {"type": "section"},
}


@pytest.mark.parametrize("blocks", BAD_BLOCKS.values(), ids=BAD_BLOCKS.keys())
async def test_invalid_blocks(fake: FakeSlack, client: AsyncWebClient, blocks):
    with pytest.raises(SlackApiError) as info:
        await client.api_call(
            "chat.postMessage", json={"channel": CHANNEL, "text": "x", "blocks": blocks}
        )
    assert info.value.response["error"] == "invalid_blocks"
    assert info.value.response["response_metadata"]["messages"][0].startswith("[ERROR] ")
    assert fake.messages(CHANNEL) == []


async def test_limits_are_inclusive(fake: FakeSlack, client: AsyncWebClient):
    blocks = [section("x" * 3000)] + [section(str(i)) for i in range(49)]
    await client.chat_postMessage(channel=CHANNEL, text="y" * 40_000, blocks=blocks)
    assert len(fake.messages(CHANNEL)[0].blocks) == 50


async def test_form_encoded_blocks(fake: FakeSlack, client: AsyncWebClient):
    blocks = json.dumps([section("from a form")])
    await client.api_call("chat.postMessage", data={"channel": CHANNEL, "blocks": blocks})
    assert fake.messages(CHANNEL)[0].plain() == "from a form"
    with pytest.raises(SlackApiError) as info:
        await client.api_call("chat.postMessage", data={"channel": CHANNEL, "blocks": "[{"})
    assert info.value.response["error"] == "invalid_blocks_format"


async def test_ratelimit_then_success_with_retry_handler(fake: FakeSlack):
    fake.rate_limit("chat.postMessage", times=1, retry_after=0)
    client = AsyncWebClient(
        token=TOKEN,
        base_url=fake.base_url,
        retry_handlers=[AsyncRateLimitErrorRetryHandler(max_retry_count=1)],
    )
    await client.chat_postMessage(channel=CHANNEL, text="eventually")
    assert [m.text for m in fake.messages(CHANNEL)] == ["eventually"]
    assert [c[0] for c in fake.rate_limited] == ["chat.postMessage"]
    assert [c[0] for c in fake.calls] == ["chat.postMessage", "chat.postMessage"]


async def test_ratelimit_without_handler_raises(fake: FakeSlack, client: AsyncWebClient):
    fake.rate_limit("chat.update", times=2, retry_after=7)
    for _ in range(2):
        with pytest.raises(SlackApiError) as info:
            await client.chat_update(channel=CHANNEL, ts="1.000001", text="x")
        assert info.value.response.status_code == 429
        assert info.value.response.headers["Retry-After"] == "7"
        assert info.value.response["error"] == "ratelimited"
    with pytest.raises(SlackApiError) as info:  # the limit is used up: a normal answer again
        await client.chat_update(channel=CHANNEL, ts="1.000001", text="x")
    assert info.value.response["error"] == "message_not_found"


async def test_files_upload_v2_lands_in_thread(fake: FakeSlack, client: AsyncWebClient):
    root = await client.chat_postMessage(channel=CHANNEL, text="INC-1")
    done = await client.files_upload_v2(
        channel=CHANNEL,
        thread_ts=root["ts"],
        content="# Timeline\n",
        filename="x.md",
        title="INC-1 timeline",
        initial_comment="timeline attached",
    )
    assert done["file"]["name"] == "x.md"
    [reply] = fake.thread(CHANNEL, root["ts"])
    assert reply.text == "timeline attached"
    [file] = reply.files
    assert (file.name, file.title, file.text) == ("x.md", "INC-1 timeline", "# Timeline\n")
    assert fake.files == [file] and "[file x.md: INC-1 timeline]" in reply.plain()
    assert [c[0] for c in fake.calls][-2:] == [
        "files.getUploadURLExternal",
        "files.completeUploadExternal",
    ]


async def test_ephemeral_and_delete(fake: FakeSlack, client: AsyncWebClient):
    resp = await client.chat_postEphemeral(channel=CHANNEL, user="U0ALICE", text="only you")
    assert fake.ephemerals[0].recipient == "U0ALICE" and fake.ephemerals[0].ts == resp["message_ts"]
    assert fake.messages(CHANNEL) == []
    human = fake.post_as_user(CHANNEL, "U0ALICE", "hi")
    with pytest.raises(SlackApiError) as info:
        await client.chat_update(channel=CHANNEL, ts=human.ts, text="edited")
    assert info.value.response["error"] == "cant_update_message"
    mine = await client.chat_postMessage(channel=CHANNEL, text="oops")
    await client.chat_delete(channel=CHANNEL, ts=mine["ts"])
    assert [m.text for m in fake.messages(CHANNEL)] == ["hi"]


async def test_users_info(client: AsyncWebClient):
    user = (await client.users_info(user="U0ALICE"))["user"]
    assert (user["id"], user["name"]) == ("U0ALICE", "user-U0ALICE")


async def test_response_url(fake: FakeSlack, client: AsyncWebClient):
    root = await client.chat_postMessage(channel=CHANNEL, text="approve?", blocks=approval_blocks())
    private = AsyncWebhookClient(fake.response_url(user="U0ALICE"))
    await private.send(text="not allowed", response_type="ephemeral")
    public = AsyncWebhookClient(fake.response_url())
    await public.send_dict(
        {"text": "run started", "response_type": "in_channel", "thread_ts": root["ts"]}
    )
    replace = AsyncWebhookClient(fake.response_url(message_ts=root["ts"]))
    await replace.send(text="approved by U0ALICE", replace_original=True)

    assert [r.response_type for r in fake.responses] == ["ephemeral", "in_channel", "ephemeral"]
    assert fake.ephemerals[0].text == "not allowed" and fake.ephemerals[0].recipient == "U0ALICE"
    assert [m.text for m in fake.thread(CHANNEL, root["ts"])] == ["run started"]
    assert fake.messages(CHANNEL)[0].plain() == "approved by U0ALICE"


async def test_state_view_and_wait_for(fake: FakeSlack, client: AsyncWebClient):
    root = await client.chat_postMessage(channel=CHANNEL, text="root")
    await client.chat_postMessage(channel=CHANNEL, text="reply", thread_ts=root["ts"])
    assert (await fake.wait_for(lambda f: f.thread(CHANNEL, root["ts"]), timeout=1))[
        0
    ].text == "reply"
    async with aiohttp.ClientSession() as http:
        async with http.get(fake.base_url.replace("/api/", "/_fake/state")) as resp:
            state = await resp.json()
    [top] = state["channels"][CHANNEL]
    assert top["text"] == "root" and top["replies"][0]["text"] == "reply"
    assert [c[0] for c in state["calls"]] == ["chat.postMessage", "chat.postMessage"]
    with pytest.raises(AssertionError):
        await fake.wait_for(lambda f: f.ephemerals, timeout=0.1)


def test_signing_matches_slack_sdk_verifier():
    secret = "8f742231b10e8888abcd99yyyzzz85a5"
    body = slash_command_body("run restart-nginx web1")
    headers = sign(secret, body)
    assert SignatureVerifier(secret).is_valid_request(body, headers)
    assert not SignatureVerifier("other").is_valid_request(body, headers)
    stale = sign(secret, body, timestamp=int(time.time()) - 600)
    assert not SignatureVerifier(secret).is_valid_request(body, stale)
    fields = parse_qs(body.decode())
    assert fields["text"] == ["run restart-nginx web1"] and fields["command"] == ["/opsbot"]


async def test_block_actions_bodies(fake: FakeSlack, client: AsyncWebClient):
    root = await client.chat_postMessage(channel=CHANNEL, text="approve?", blocks=approval_blocks())
    body = click_body(fake.messages(CHANNEL)[0], "opsbot.approve", user_id="U0BOB")
    assert SignatureVerifier("s3cret").is_valid_request(body, sign("s3cret", body))
    payload = json.loads(parse_qs(body.decode())["payload"][0])
    assert payload["type"] == "block_actions" and payload["user"]["id"] == "U0BOB"
    assert payload["container"] == {
        "type": "message",
        "message_ts": root["ts"],
        "channel_id": CHANNEL,
        "is_ephemeral": False,
    }
    [action] = payload["actions"]
    assert (action["action_id"], action["value"], action["block_id"]) == (
        "opsbot.approve",
        "tok-1",
        "decide",
    )
    plain = json.loads(
        parse_qs(block_actions_body("opsbot.reject", "t", "U1", "C1", "1.2", "1.1").decode())[
            "payload"
        ][0]
    )
    assert plain["container"]["thread_ts"] == "1.1" and plain["message"]["thread_ts"] == "1.1"


async def test_bolt_accepts_signed_bodies_and_answers_through_the_fake(fake: FakeSlack):
    from slack_bolt.async_app import AsyncApp
    from slack_bolt.request.async_request import AsyncBoltRequest

    app = AsyncApp(client=AsyncWebClient(token=TOKEN, base_url=fake.base_url), signing_secret="s")

    @app.command("/opsbot")
    async def command(ack, command, respond, client):
        await ack()
        await respond(text=f"got {command['text']}", response_type="in_channel")
        await client.chat_postMessage(
            channel=command["channel_id"], text="?", blocks=approval_blocks()
        )

    @app.action("opsbot.approve")
    async def approve(ack, body, respond):
        await ack()
        action = body["actions"][0]
        await respond(
            text=f"approved by {body['user']['id']} ({action['value']})", replace_original=True
        )

    async def dispatch(body: bytes) -> int:
        request = AsyncBoltRequest(body=body.decode(), headers=sign("s", body))
        return (await app.async_dispatch(request)).status

    assert await dispatch(slash_command_body("help", response_url=fake.response_url())) == 200
    msg = await fake.wait_for(lambda f: f.messages(CHANNEL)[1:] and f.messages(CHANNEL)[1])
    url = fake.response_url(user="U0BOB", message_ts=msg.ts)
    assert (
        await dispatch(click_body(msg, "opsbot.approve", user_id="U0BOB", response_url=url)) == 200
    )
    assert [m.plain() for m in fake.messages(CHANNEL)] == ["got help", "approved by U0BOB (tok-1)"]
    assert fake.messages(CHANNEL)[1].history[0]["text"] == "?"
