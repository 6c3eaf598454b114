"""An alert storm: 5,000 payloads posted concurrently, repeats and the two Alertmanagers of an HA
pair sending the same groups. One incident per group, one run per incident, every payload kept.
(How fast is measured in bench/bench_ingest.py, not here.)"""

from __future__ import annotations

import asyncio
import json
import random

import aiohttp
import pytest

from tests.botfixtures import ALERT_TOKEN, RunningBot, alert_payload

pytestmark = pytest.mark.lab

GROUPS, COPIES, CLIENTS = 1000, 5, 50


@pytest.mark.slack_pace  # the storm alone on the CPU: its thousands of posts are not read here
async def test_storm_of_5000_alerts_one_incident_per_group_every_payload_kept(
        running_bot: RunningBot) -> None:
    bot = running_bot
    payloads = []
    for g in range(GROUPS):
        if g == 0:  # the lab's own group: its runbook runs on web01, once
            group = alert_payload()
        else:
            group = alert_payload(name=f"Storm{g % 37}", host=f"node{g}",
                                  extra_labels={"shard": str(g)})
        payloads += [group] * COPIES  # HA twins and repeats: the very same group
    random.Random(11).shuffle(payloads)
    statuses: list[int] = []
    gate = asyncio.Semaphore(CLIENTS)
    headers = {"Authorization": f"Bearer {ALERT_TOKEN}", "Content-Type": "application/json"}
    url = f"{bot.url}/alerts/alertmanager"

    async def send(http: aiohttp.ClientSession, payload: dict) -> None:
        async with gate, http.post(url, data=json.dumps(payload), headers=headers) as resp:
            statuses.append(resp.status)
            await resp.read()

    connector = aiohttp.TCPConnector(limit=CLIENTS)
    async with aiohttp.ClientSession(connector=connector) as http:
        await asyncio.gather(*(send(http, p) for p in payloads))
    assert statuses.count(200) == GROUPS * COPIES, sorted(set(statuses))

    store = bot.store()

    def settled() -> bool:
        return store.db.execute("SELECT count(*) FROM work WHERE status = 'pending'"
                                ).fetchone()[0] == 0

    await bot.wait(settled, timeout=120)
    q = store.db.execute
    assert q("SELECT count(*) FROM webhooks").fetchone()[0] == GROUPS * COPIES
    assert q("SELECT count(*) FROM webhooks WHERE incident_id IS NULL").fetchone()[0] == 0
    assert q("SELECT count(*) FROM alerts").fetchone()[0] == GROUPS * COPIES
    assert q("SELECT count(*) FROM incidents").fetchone()[0] == GROUPS
    assert q("SELECT count(DISTINCT group_key) FROM incidents").fetchone()[0] == GROUPS
    assert q("SELECT max(n) FROM (SELECT count(*) AS n FROM alerts GROUP BY incident_id)"
             ).fetchone()[0] == COPIES
    lab = store.incident_for_group(alert_payload()["groupKey"])
    assert lab is not None
    await bot.wait(lambda: store.get_incident(lab.id).phase not in ("investigating",
                                                                  "diagnosing"), timeout=60)
    assert [r["incident_id"] for r in store.db.query("SELECT incident_id FROM runs")] == [lab.id]
    async with bot.session.get(f"{bot.url}/metrics") as resp:
        metrics = await resp.text()
    assert f"opsbot_alert_payloads_received_total {GROUPS * COPIES}.0" in metrics
    assert f"opsbot_webhooks_total {GROUPS * COPIES}.0" in metrics
    assert "opsbot_webhook_batches" in metrics
    assert store.verify_audit().ok
