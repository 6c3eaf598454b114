"""`kill -9` of `opsbot serve` at random points of webhook bursts, runs and approvals, and
SIGTERM: nothing accepted is lost, no remediation runs twice, nothing stays stuck.

The bot is a real child process; the Slack stand-in runs in the test. The seed of the kill
points is printed (set OPSBOT_TEST_SEED to replay it, OPSBOT_TEST_KILLS for more rounds).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, ClassVar

import aiohttp
import pytest

from bot.adapters.store import RUNNING_PHASES, Store
from tests.botfixtures import ALERT_TOKEN, CHANNEL, ROOT, alert_payload, bot_env, run_cli
from tests.fakeslack import FakeSlack, Msg
from tests.lab import WebLab, free_port
from tests.slacksign import click_body, sign, slash_command_body

pytestmark = pytest.mark.lab

KILLS = int(os.environ.get("OPSBOT_TEST_KILLS", "5"))


class Serve:
    """`python -m bot serve` as a child process (at TEST_PACE: tests/pacedbot.py)."""

    started: ClassVar[list[asyncio.subprocess.Process]] = []  # for `no_bot_left`
    orphans: ClassVar[list[int]] = []  # edge processes of bots killed (OPSBOT_EDGE=process)

    def __init__(self, env: dict[str, str], log: Path, *args: str) -> None:
        self.env, self.log, self.args = env, log, args
        self.proc: asyncio.subprocess.Process | None = None
        self.url = f"http://{env['OPSBOT_LISTEN']}"

    async def start(self, http: aiohttp.ClientSession) -> None:
        with self.log.open("a") as out:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tests.pacedbot", *self.args, "serve",
                env={**os.environ, **self.env}, cwd=ROOT,
                stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out)
        Serve.started.append(self.proc)
        deadline = time.monotonic() + 180  # a busy CI machine starts Python slowly
        while time.monotonic() < deadline:
            try:
                async with http.get(f"{self.url}/healthz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            assert self.proc.returncode is None, self.log.read_text()[-3000:]
            await asyncio.sleep(0.1)
        raise AssertionError("opsbot did not start: " + self.log.read_text()[-3000:])

    async def kill9(self) -> None:
        assert self.proc is not None
        Serve.orphans += edge_processes(self.proc.pid)  # they answer on, until taken over
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()


    async def stop(self) -> int:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.proc.wait(), 90)


def edge_processes(pid: int) -> list[int]:
    """The edge processes (bot.edgeproc) that process `pid` started."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    return [int(c) for c in children if is_edge(int(c))]


def is_edge(pid: int) -> bool:
    try:
        return b"bot.edgeproc" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


@pytest.fixture(autouse=True)
async def no_bot_left() -> AsyncIterator[None]:
    """A test that fails midway leaves no serving bot behind: what it started is stopped."""
    yield
    while Serve.started:
        proc = Serve.started.pop()
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()
    while Serve.orphans:  # an edge whose bot was killed and never started again
        pid = Serve.orphans.pop()
        if is_edge(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)


@pytest.fixture(params=["thread", "process"])
def edge(request: pytest.FixtureRequest) -> str:
    """OPSBOT_EDGE: each test with the HTTP thread, and with the process of its own."""
    return str(request.param)


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    fake = FakeSlack(channels=(CHANNEL,))
    await fake.start()
    yield fake
    await fake.stop()


def serve_env(tmp_path: Path, slack: FakeSlack, inventory: Path, known_hosts: Path,
              **extra: str) -> dict[str, str]:
    env = bot_env(tmp_path / "opsbot.db", slack.base_url, inventory, known_hosts, free_port())
    return {**env, **extra}


async def post_alert(http: aiohttp.ClientSession, url: str, payload: dict[str, Any]) -> int | None:
    """The webhook id when answered 2xx; None when the bot was not there to answer."""
    try:
        async with http.post(f"{url}/alerts/alertmanager", data=json.dumps(payload),
                             headers={"Authorization": f"Bearer {ALERT_TOKEN}"}) as resp:
            if resp.status // 100 == 2:
                return int((await resp.json())["webhook"])
    except (TimeoutError, aiohttp.ClientError):
        pass
    return None


async def click(http: aiohttp.ClientSession, url: str, slack: FakeSlack, msg: Msg) -> None:
    body = click_body(msg, "opsbot.approve", user_id="U0ALICE",
                      response_url=slack.response_url(channel=CHANNEL, user="U0ALICE",
                                                      message_ts=msg.ts))
    try:
        async with http.post(f"{url}/slack/events", data=body,
                             headers=sign("signing-secret-for-tests", body)) as resp:
            await resp.read()
    except (TimeoutError, aiohttp.ClientError):
        pass


def approve_buttons(slack: FakeSlack) -> list[Msg]:
    return [m for m in slack.all_messages
            if m.channel == CHANNEL and "[Approve](opsbot.approve)" in m.plain()]


def stuck(store: Store) -> list[str]:
    """Open incidents in a running phase without a run going on."""
    marks = ", ".join("?" for _ in RUNNING_PHASES)
    return [f"INC-{r['id']} {r['phase']}" for r in store.db.query(
        f"SELECT id, phase FROM incidents WHERE status = 'open' AND phase IN ({marks}) AND id "
        "NOT IN (SELECT incident_id FROM runs WHERE status = 'running')", RUNNING_PHASES)]


async def test_repeated_kill_9_loses_nothing_and_runs_no_fix_twice(
        tmp_path: Path, slack: FakeSlack, healthy_web: WebLab, inventory_file: Path,
        known_hosts_file: Path, edge: str) -> None:
    seed = int(os.environ.get("OPSBOT_TEST_SEED", time.time_ns() % 1_000_000))
    print(f"kill seed: OPSBOT_TEST_SEED={seed} OPSBOT_TEST_KILLS={KILLS}")
    rng = random.Random(seed)
    env = serve_env(tmp_path, slack, inventory_file, known_hosts_file, OPSBOT_EDGE=edge)
    bot = Serve(env, tmp_path / "serve.log")
    answered: list[int] = []
    clicked: set[str] = set()
    healthy_web.stop_backend()
    async with aiohttp.ClientSession() as http:
        for kill in range(KILLS):
            await bot.start(http)
            # a burst: the lab's real group (runs the diagnosis on web01), many other groups,
            # each sent twice as the two Alertmanagers of an HA pair do, and repeats
            payloads = [alert_payload()] * 3
            for i in range(rng.randint(20, 60)):
                group = alert_payload(name=f"Storm{kill}x{i % 15}", host=f"node{i % 15}")
                payloads += [group, group]
            rng.shuffle(payloads)
            burst = asyncio.gather(*(post_alert(http, bot.url, p) for p in payloads))
            await asyncio.sleep(rng.uniform(0.0, 0.5))
            if not clicked and healthy_web.proxy_status() != 200:
                # a kill must meet an approval and its remediation: wait for the first buttons
                with contextlib.suppress(AssertionError):
                    await slack.wait_for(lambda s: [m for m in approve_buttons(s)
                                                    if m.ts not in clicked], timeout=30)
            for msg in approve_buttons(slack):  # approvals from this and earlier rounds
                if msg.ts not in clicked and rng.random() < 0.7:
                    clicked.add(msg.ts)
                    await click(http, bot.url, slack, msg)
            await asyncio.sleep(rng.uniform(0.0, 4.0))
            await bot.kill9()
            answered += [w for w in await burst if w is not None]
            if healthy_web.proxy_status() == 200 and rng.random() < 0.5:
                healthy_web.stop_backend()  # a fix went through: break it again
        await bot.start(http)
        store = Store(env["OPSBOT_DB"])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            left = store.db.execute("SELECT count(*) FROM work WHERE status = 'pending'"
                                    ).fetchone()[0]
            if not left and not stuck(store):
                break
            await asyncio.sleep(0.5)
        # within a minute of the restart: nothing accepted is waiting, nothing is stuck
        assert stuck(store) == []
        assert store.db.execute("SELECT count(*) FROM work WHERE status != 'done'"
                                ).fetchone()[0] == 0
        # every webhook answered 2xx has its incident, and one incident per group
        assert answered, "no webhook was answered before the kills"
        marks = ", ".join("?" for _ in answered)
        unlinked = list(store.db.query(f"SELECT id, outcome FROM webhooks WHERE id IN ({marks}) "
                                       "AND incident_id IS NULL", answered))
        assert unlinked == []
        assert list(store.db.query("SELECT group_key, count(*) FROM incidents GROUP BY "
                                   "group_key HAVING count(*) > 1")) == []
        # no remediation ran twice: at most one start per approved approval (and some ran)
        assert clicked, "no approval was clicked: the kills never met a remediation"
        fixes = list(store.db.query("SELECT incident_id, step_id, count(*) AS n FROM step_runs "
                                    "WHERE phase = 'remediation' GROUP BY 1, 2"))
        for fix in fixes:
            approved = store.db.execute(
                "SELECT count(*) FROM approvals WHERE incident_id = ? AND step_id = ? AND "
                "status = 'approved'", (fix["incident_id"], fix["step_id"])).fetchone()[0]
            assert fix["n"] <= approved, fix
        # the audit chain is whole, and so is the database file
        verify = await run_cli(env, "audit", "verify")
        assert verify.returncode == 0, verify.stderr
        assert store.integrity_check() == "ok"
        assert await bot.stop() == 0
    print(f"kills: {KILLS}, payloads answered 2xx: {len(answered)}, incidents: "
          f"{len(store.list_incidents(limit=10_000))}, approvals clicked: {len(clicked)}, "
          f"remediations: {sum(f['n'] for f in fixes)}")


async def test_sigterm_stops_taking_work_marks_the_rest_and_exits_0(
        tmp_path: Path, slack: FakeSlack, healthy_web: WebLab, inventory_file: Path,
        known_hosts_file: Path, edge: str) -> None:
    env = serve_env(tmp_path, slack, inventory_file, known_hosts_file,
                    OPSBOT_STOP_TIMEOUT="1", OPSBOT_EDGE=edge)
    bot = Serve(env, tmp_path / "serve.log", "--log-format", "json")
    store = Store(env["OPSBOT_DB"])
    healthy_web.stop_backend()
    async with aiohttp.ClientSession() as http:
        await bot.start(http)
        assert await post_alert(http, bot.url, alert_payload()) is not None
        for _ in range(200):
            if store.db.execute("SELECT count(*) FROM step_runs WHERE status = 'running'"
                                ).fetchone()[0]:
                break
            await asyncio.sleep(0.05)
        started = time.monotonic()
        assert await bot.stop() == 0
        assert time.monotonic() - started < 30
        # no new work while stopping and after; what ran is finished or marked
        assert await post_alert(http, bot.url, alert_payload(name="Late")) is None
        assert store.db.execute("SELECT count(*) FROM step_runs WHERE status = 'running'"
                                ).fetchone()[0] == 0
        assert [r["status"] for r in store.db.query("SELECT status FROM runs")] in \
            (["interrupted"], ["awaiting approval"])
        assert store.db.execute("SELECT count(*) FROM outbox WHERE status = 'pending'"
                                ).fetchone()[0] == 0  # Slack was up: all of it went
        lines = [json.loads(line) for line in (tmp_path / "serve.log").read_text().splitlines()]
        assert [r["message"] for r in lines if r["level"] == "error"] == []
        assert "opsbot stopped" in [r["message"] for r in lines]  # JSON logs, one a line
        # the next start runs the interrupted diagnosis again, to the end
        await bot.start(http)
        await slack.wait_for(lambda s: approve_buttons(s), timeout=60)
        assert store.get_incident(1).phase == "awaiting approval"
        assert await bot.stop() == 0


async def test_slash_command_cut_by_kill_9_is_answered_after_restart(
        tmp_path: Path, slack: FakeSlack, healthy_web: WebLab, inventory_file: Path,
        known_hosts_file: Path, edge: str) -> None:
    """A `run` accepted (answered "Running…") when opsbot dies is done by the next start, and
    its answer reaches the user through the command's response_url, not only the log."""
    env = serve_env(tmp_path, slack, inventory_file, known_hosts_file, OPSBOT_EDGE=edge)
    bot = Serve(env, tmp_path / "serve.log")
    healthy_web.stop_backend()
    response_url = slack.response_url(channel=CHANNEL, user="U0ALICE")
    body = slash_command_body("run nginx-502 web01", response_url=response_url)
    async with aiohttp.ClientSession() as http:
        await bot.start(http)
        async with http.post(f"{bot.url}/slack/events", data=body,
                             headers=sign("signing-secret-for-tests", body)) as resp:
            assert resp.status == 200
            assert "Running nginx-502 on web01" in (await resp.json())["text"]
        await bot.kill9()  # the run has barely started: its answer was never sent
        assert not [r for r in slack.responses if r.url == response_url]
        await bot.start(http)
        answers = await slack.wait_for(
            lambda s: [r for r in s.responses if r.url == response_url], timeout=90)
        assert len(answers) == 1 and answers[0].response_type == "ephemeral"
        assert answers[0].text.startswith("(after a restart) nginx-502 on web01: done, see INC-")
        assert answers[0].user == "U0ALICE"
        assert await bot.stop() == 0
    # the response_url is a secret: not in the log, the audit records or an export
    log = (tmp_path / "serve.log").read_text()
    assert response_url not in log and "Traceback" not in log
    store = Store(env["OPSBOT_DB"])
    assert not [r for r in store.audit_records() if response_url in json.dumps(r)]
    assert response_url not in str(store.db.query("SELECT payload FROM work"))  # answered
    export = await run_cli(env, "export", "INC-1", "--format", "json")
    assert export.returncode == 0 and response_url not in export.stdout


async def test_approve_from_a_terminal_learns_that_the_fix_was_interrupted(
        tmp_path: Path, slack: FakeSlack, healthy_web: WebLab, inventory_file: Path,
        known_hosts_file: Path, edge: str) -> None:
    """`opsbot approve` hands the fix to the serving bot, which is killed during it: after the
    restart the command ends (exit 1, "interrupted") instead of waiting for an outcome."""
    env = serve_env(tmp_path, slack, inventory_file, known_hosts_file, OPSBOT_EDGE=edge)
    bot = Serve(env, tmp_path / "serve.log")
    healthy_web.stop_backend()
    store = Store(env["OPSBOT_DB"])
    async with aiohttp.ClientSession() as http:
        await bot.start(http)
        assert await post_alert(http, bot.url, alert_payload()) is not None
        await slack.wait_for(approve_buttons, timeout=60)
        token = store.approvals_of(1, "pending")[0].token
        approve = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", "approve", token,
            env={**os.environ, **env, "PYTHONUNBUFFERED": "1"}, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        deadline = time.monotonic() + 30
        while not [s for s in store.steps_of(1)
                   if s.phase == "remediation" and s.status == "running"]:
            if approve.returncode is not None:  # it ended before the fix began: say why
                out, err = await approve.communicate()
                pytest.fail(f"opsbot approve exited {approve.returncode} before the fix ran: "
                            f"{(out + err).decode(errors='replace')[-800:]}")
            assert time.monotonic() < deadline, "the approved fix never started"
            await asyncio.sleep(0.05)
        await bot.kill9()
        # once the sign of life is stale (HEARTBEAT_FRESH), the command says so; then the restart
        said = ""
        while "The serving opsbot stopped" not in said:
            assert approve.stdout is not None
            line = (await asyncio.wait_for(approve.stdout.readline(), 60)).decode()
            assert line, said
            said += line
        await bot.start(http)
        out, err = await asyncio.wait_for(approve.communicate(), 90)
        said += out.decode()
        assert approve.returncode == 1, said + err.decode()
        assert "handed to the serving opsbot" in said
        assert said.rstrip().endswith("on web01: interrupted."), said
        assert await bot.stop() == 0
    fixes = [s.status for s in store.steps_of(1) if s.phase == "remediation"]
    assert fixes == ["interrupted"]  # marked, and never run again
