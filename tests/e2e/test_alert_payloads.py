"""Alertmanager payloads as other projects keep them (tests/data/alertmanager/SOURCES.md),
posted to a running opsbot: each opens, joins or resolves the incident it should."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.botfixtures import RunningBot

FIXTURES = Path(__file__).resolve().parents[1] / "data" / "alertmanager"

# (fixture, what happens to its group, the groupKey the incident carries)
SEQUENCE = [
    ("prometheus-msteams-prom_post_request.json", "opened",
     '{}:{alertname="high_memory_load"}'),
    ("prometheus-msteams-prom_post_request_2_alerts.json", "joined",
     '{}:{alertname="high_memory_load"}'),
    ("alerta-prometheus_alert.json", "opened", "5615590933959184469"),
    ("prometheus-am-executor-alert_payload.json", "opened",
     'derived:default:{"alertname":"InstanceDown"}'),
    ("prometheus-am-executor-alert_payload.json", "joined",
     'derived:default:{"alertname":"InstanceDown"}'),
    ("alertmanager-bot-firing.json", "opened", '{}:{alertname="Fire"}'),
    ("alertmanager-bot-resolved.json", "resolved", '{}:{alertname="Fire"}'),
    ("zulip-alert.json", "opened", "{}/{}:{}"),
    ("zulip-single_alert.json", "resolved", "{}/{}:{}"),
    ("grafana-oncall-example_payload.json", "opened", "{}:{}"),
]


def webhook(bot: RunningBot, webhook_id: int) -> dict[str, Any] | None:
    rows = list(bot.store().db.query("SELECT outcome, incident_id FROM webhooks WHERE id = ?",
                                     (webhook_id,)))
    return rows[0] if rows and rows[0]["outcome"] != "received" else None


async def post_and_wait(bot: RunningBot, body: bytes) -> dict[str, Any]:
    status, answer = await bot.post_alert(None, raw=body)
    assert status == 200, answer
    return await bot.wait(lambda: webhook(bot, answer["webhook"]))


async def test_every_collected_payload_lands_on_the_right_incident(light_bot: RunningBot) -> None:
    bot = light_bot
    assert len({name.split("-")[0] for name, _, _ in SEQUENCE}) >= 5
    incident_of: dict[str, int] = {}
    for name, how, group_key in SEQUENCE:
        outcome = await post_and_wait(bot, (FIXTURES / name).read_bytes())
        assert outcome["outcome"] == how, name
        incident = bot.store().get_incident(outcome["incident_id"])
        assert incident.group_key == group_key, name
        if how == "opened":
            assert group_key not in incident_of, name
            incident_of[group_key] = incident.id
        else:
            assert incident_of[group_key] == incident.id, name
        assert incident.status == ("resolved" if how == "resolved" else "open"), name
    # every group made its own root message
    await bot.wait(lambda: len(bot.roots()) == len({k for _, _, k in SEQUENCE}))
    assert all(p.name in (FIXTURES / "SOURCES.md").read_text()
               for p in FIXTURES.glob("*.json"))


async def test_truncated_alerts_are_said_and_a_pure_repeat_starts_nothing(
        light_bot: RunningBot) -> None:
    bot = light_bot
    body = json.loads((FIXTURES / "zulip-alert.json").read_text())
    body["truncatedAlerts"] = 3
    opened = await post_and_wait(bot, json.dumps(body).encode())
    assert opened["outcome"] == "opened"
    await bot.wait(lambda: bot.roots() and "left 3 more alert(s)" in bot.thread_text())
    # Alertmanager >= 0.32 says why it sends: a repeat of an open group joins it quietly...
    body["notification_reason"] = "repeat interval elapsed"
    again = await post_and_wait(bot, json.dumps(body).encode())
    assert again == {"outcome": "repeat, joined", "incident_id": opened["incident_id"]}
    # ...and a repeat of a group opsbot has no open incident for opens nothing
    body["groupKey"] = "{}:{alertname=\"NeverSeen\"}"
    lone = await post_and_wait(bot, json.dumps(body).encode())
    assert lone == {"outcome": "repeat, nothing started", "incident_id": None}
    assert [i.id for i in bot.store().list_incidents()] == [opened["incident_id"]]
