"""What the thread is made of stays within Slack's limits, and is sent at Slack's pace."""

from __future__ import annotations

import asyncio

import pytest
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.adapters.slack import SlackTransport
from bot.models import Cause, Incident, IncidentStatus, Phase, RenderedStep, StepResult, StepStatus
from bot.outbox import Outgoing
from bot.progress import Board, Presenter
from bot.render import Message, finding_message, group_findings, note_message
from tests.fakeslack import FakeSlack, block_errors


def _result(host: str, step: str, status: StepStatus, output: str = "x") -> StepResult:
    rendered = RenderedStep(step_id=step, kind="ssh", phase=Phase.DIAGNOSTIC, host=host,
                            action={"command": "true"}, display="true", timeout=5, title=step)
    return StepResult(step=rendered, status=status, exit_status=0, started_at="", duration=0.1,
                      output=output, output_bytes=len(output), digest="0" * 64)


def test_a_board_of_500_hosts_fits_one_message() -> None:
    hosts = [f"host-with-a-long-name-{i:03d}.example.com" for i in range(500)]
    board = Board("nginx-502 on 500 host(s)", hosts)
    for i, host in enumerate(hosts):
        for j in range(13):
            status = StepStatus.FAILED if (i + j) % 7 == 0 else StepStatus.OK
            board.finished_step(_result(host, f"step_number_{j}", status))
        board.host_done(host)
    board.finished = True
    msg = board.message()
    assert block_errors(msg.blocks) == []
    assert len(msg.text) <= 40_000 and len(msg.blocks) <= 50
    assert "500/500 host(s) done" in msg.text


def test_one_host_shows_each_step() -> None:
    board = Board("nginx-502 on web01", ["web01"])
    board.finished_step(_result("web01", "healthcheck", StepStatus.FAILED))
    board.started(_result("web01", "disk", StepStatus.OK).step)
    text = "\n".join(b["text"]["text"] for b in board.message().blocks if "text" in b)
    assert "(`healthcheck`) on `web01` — *failed*" in text
    assert "(`disk`) on `web01` — running" in text


def test_hosts_that_share_a_finding_share_a_message() -> None:
    same = Cause("upstream_down", 0.9, evidence=("connect() failed (111)",),
                 summary="The backend is not running.")
    other = Cause("disk_full", 0.8, evidence=("No space left on device",))
    found = [(f"web{i:02d}", [same], ["Start it."]) for i in range(40)]
    found += [("db01", [other], []), ("db02", [], [])]
    groups = group_findings(found)
    assert [len(g.hosts) for g in groups] == [40, 1, 1]
    msg = finding_message(groups[0])
    assert block_errors(msg.blocks) == []
    shown = "\n".join(b["text"]["text"] for b in msg.blocks if "text" in b)
    assert all(f"`web{i:02d}`" in shown for i in range(40))
    assert "The backend is not running." in msg.detail and "Start it." in msg.detail


async def test_presenter_sends_the_latest_state_at_most_once_a_second() -> None:
    sent: list[str] = []

    async def send(key: str, msg: Message) -> None:
        sent.append(msg.text)

    presenter = Presenter(send, interval=1.0)
    board = presenter.board("progress:1", "run", ["web01"])
    for i in range(200):  # the work goes as fast as it goes: nothing here waits for chat
        board.finished_step(_result("web01", f"s{i}", StepStatus.OK))
        presenter.changed("progress:1")
        await asyncio.sleep(0.01)
    await presenter.finish("progress:1")
    await presenter.close()
    assert 2 <= len(sent) <= 5, sent
    assert "200 step(s) finished" in sent[-1] and "finished" in sent[-1]


async def test_fake_slack_refuses_what_slack_refuses_and_the_transport_never_trips_it() -> None:
    fake = FakeSlack()
    fake.enforce_rate_limits()
    url = await fake.start()
    try:
        raw = AsyncWebClient(token="xoxb-test-token", base_url=url)
        with pytest.raises(SlackApiError) as refused:
            for i in range(5):
                await raw.chat_postMessage(channel="C0INCIDENT", text=f"burst {i}")
        assert refused.value.response.status_code == 429
        assert refused.value.response.headers.get("Retry-After") == "1"
        assert len(fake.rate_limited) == 1
        await asyncio.sleep(3)

        transport = SlackTransport(AsyncWebClient(token="xoxb-test-token", base_url=url),
                                   "C0INCIDENT")
        incident = Incident(1, "g", IncidentStatus.OPEN, "t", "2026-01-01T00:00:00.000Z")
        root = await transport.deliver(Outgoing(1, incident, "root", note_message("root")))
        incident = Incident(1, "g", IncidentStatus.OPEN, "t", "2026-01-01T00:00:00.000Z",
                            channel=root.channel, thread_ts=root.ts)
        loop = asyncio.get_running_loop()
        began = loop.time()
        ts = [(await transport.deliver(Outgoing(2 + i, incident, f"k{i}",
                                                note_message(f"m{i}")))).ts for i in range(6)]
        for i in range(4):
            await transport.deliver(Outgoing(2, incident, "k0", note_message(f"m0 v{i}"),
                                             ts=ts[0]))
        assert len(fake.rate_limited) == 1  # only the raw burst above
        assert loop.time() - began >= 3.0  # 7 posts: a burst of 3, then one a second
        await transport.close()
    finally:
        await fake.stop()
