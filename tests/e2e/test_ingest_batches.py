"""Group commit of webhooks, seen from Alertmanager's side: a burst is written in fewer
transactions than payloads and its incidents opened in batches; when the store refuses a write,
the payloads it could not keep are answered 503 (Alertmanager retries them) and every payload
answered 200 is in the store, once. (How fast: bench/bench_ingest.py.)"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.botfixtures import ALERT_TOKEN, ROOT, RunningBot, alert_payload, serving_bot
from tests.storebackends import BACKENDS, raw_sql

CLIENTS = 50
HEADERS = {"Authorization": f"Bearer {ALERT_TOKEN}", "Content-Type": "application/json"}


def storm(count: int, tag: str) -> list[dict[str, Any]]:
    return [alert_payload(name=f"{tag}{i % 7}", host=f"{tag.lower()}{i}",
                          extra_labels={"shard": str(i)}) for i in range(count)]


async def post_all(bot: RunningBot, payloads: list[dict[str, Any]]) -> list[int]:
    """Every payload from CLIENTS concurrent clients; the statuses in payload order."""
    gate = asyncio.Semaphore(CLIENTS)
    url = f"{bot.url}/alerts/alertmanager"

    async def send(http: aiohttp.ClientSession, payload: dict[str, Any]) -> int:
        async with gate, http.post(url, data=json.dumps(payload), headers=HEADERS) as resp:
            await resp.read()
            return resp.status

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CLIENTS)) as http:
        return list(await asyncio.gather(*(send(http, p) for p in payloads)))


async def metric(bot: RunningBot, name: str) -> float:
    async with bot.session.get(f"{bot.url}/metrics") as resp:
        for line in (await resp.text()).splitlines():
            if line.startswith(f"{name} "):
                return float(line.split()[1])
    raise AssertionError(f"{name} is not in /metrics")


def recorded(bot: RunningBot, marker: str) -> int:
    """Webhooks whose stored body holds `marker`."""
    return int(raw_sql(str(bot.settings.db), "SELECT count(*) FROM webhooks WHERE body LIKE ?",
                       (f"%{marker}%",))[0][0])


async def settled(bot: RunningBot) -> None:
    def done() -> bool:
        return raw_sql(str(bot.settings.db),
                       "SELECT count(*) FROM work WHERE status = 'pending'")[0][0] == 0

    await bot.wait(done, timeout=120)


@pytest.fixture(params=BACKENDS)
async def either_bot(request: pytest.FixtureRequest, tmp_path: Path
                     ) -> AsyncIterator[RunningBot]:
    """light_bot's setup on a SQLite file or on a database of the lab's PostgreSQL."""
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text("all:\n  hosts:\n    edge01:\n      ansible_host: 192.0.2.10\n")
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")
    db = {} if request.param == "sqlite" else \
        {"OPSBOT_DB": str(request.getfixturevalue("postgres_server").create_database())}
    async with serving_bot(request, tmp_path, inventory, known_hosts,
                           OPSBOT_RUNBOOKS=str(ROOT / "runbooks"), **db) as bot:
        yield bot


@pytest.mark.slack_pace  # the burst alone on the CPU: its hundreds of posts are not read here
async def test_a_burst_is_committed_and_opened_in_fewer_transactions_than_payloads(
        either_bot: RunningBot) -> None:
    bot = either_bot
    payloads = storm(400, "Burst")
    statuses = await post_all(bot, payloads)
    assert statuses == [200] * len(payloads)
    assert recorded(bot, "Burst") == len(payloads)
    intake_batches = await metric(bot, "opsbot_webhook_batches")
    assert 0 < intake_batches < len(payloads)
    await settled(bot)
    db = str(bot.settings.db)
    assert raw_sql(db, "SELECT count(*) FROM incidents WHERE group_key LIKE '%Burst%'")[0][0] == 400
    assert raw_sql(db, "SELECT count(*) FROM webhooks WHERE incident_id IS NULL")[0][0] == 0
    assert raw_sql(db, "SELECT count(*) FROM alerts")[0][0] == 400
    assert 0 < await metric(bot, "opsbot_alert_batches") < len(payloads)
    store = bot.store()
    try:
        assert store.verify_audit().ok
    finally:
        store.close()


@pytest.mark.slack_pace
async def test_a_payload_the_store_refuses_is_answered_503_alone_and_nothing_answered_200_is_lost(
        light_bot: RunningBot) -> None:
    bot = light_bot
    db = str(bot.settings.db)
    # the store refuses to keep one kind of payload (as a full disk or a broken table would)
    raw_sql(db, "CREATE TRIGGER refuse BEFORE INSERT ON webhooks WHEN NEW.body LIKE '%Poison%' "
                "BEGIN SELECT RAISE(ABORT, 'the disk is on fire'); END")
    payloads = storm(200, "Good")
    payloads[57:57] = storm(3, "Poison")  # in the middle of the burst: in some batch
    statuses = await post_all(bot, payloads)
    refused = [p for p, s in zip(payloads, statuses, strict=True) if s != 200]
    assert {s for s in statuses if s != 200} == {503}
    assert [p["alerts"][0]["labels"]["alertname"][:6] for p in refused] == ["Poison"] * 3
    assert recorded(bot, "Good") == 200 and recorded(bot, "Poison") == 0

    # the store cannot write at all: every payload of the burst hears 503, none is half-kept
    raw_sql(db, "CREATE TRIGGER refuse_all BEFORE INSERT ON webhooks "
                "BEGIN SELECT RAISE(ABORT, 'the disk is full'); END")
    more = storm(60, "Later")
    assert set(await post_all(bot, more)) == {503}
    assert recorded(bot, "Later") == 0
    code, answer = await bot.post_alert(more[0])
    assert code == 503 and "retry later" in answer["error"]

    # the store recovers; Alertmanager's retries are kept, each once
    raw_sql(db, "DROP TRIGGER refuse")
    raw_sql(db, "DROP TRIGGER refuse_all")
    assert set(await post_all(bot, refused + more)) == {200}
    assert recorded(bot, "Good") == 200
    assert recorded(bot, "Poison") == 3 and recorded(bot, "Later") == 60
    await settled(bot)
    assert raw_sql(db, "SELECT count(*) FROM incidents")[0][0] == 263
    assert raw_sql(db, "SELECT count(*) FROM webhooks WHERE incident_id IS NULL")[0][0] == 0
    assert bot.store().verify_audit().ok
