"""A canary secret put everywhere a secret can come in: it must come out nowhere."""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path

import pytest

from tests.botfixtures import RunningBot, alert_payload, run_cli

ROOT = Path(__file__).resolve().parents[2]
CANARY = "Kx9canary7Q"


@pytest.mark.bot_env(OPSBOT_RUNBOOKS=str(ROOT / "tests/data/runbooks"))
async def test_a_canary_secret_reaches_no_slack_call_table_export_or_log(
        running_bot: RunningBot, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    bot = running_bot
    payload = alert_payload(name="CanaryTest", extra_labels={
        "db_password": CANARY, "note": f"token={CANARY}"})
    for alert in payload["alerts"]:
        alert["annotations"] = {
            "summary": f"502 <!here> on web01, password={CANARY}",
            "description": f"runbook at https://ops:{CANARY}@wiki.example/x; "
                           f"Authorization: Bearer {CANARY}"}
    payload["commonAnnotations"] = payload["alerts"][0]["annotations"]
    status, _ = await bot.post_alert(payload)
    assert status == 200

    def finished(step_id: str) -> bool:
        return any(f"(`{step_id}`)" in m.plain() and "running" not in m.plain()
                   for m in bot.thread())

    await bot.wait(lambda: bot.roots() and finished("leaky_output") and finished("leaky_url"))
    thread = bot.thread_text()
    # the steps did run: their outputs are in the run's uploaded file, redacted
    upload = await bot.wait(lambda: next((f for f in bot.slack.files
                                          if f.name.endswith("-steps.txt") and f.uploaded), None))
    assert "password=[REDACTED]" in upload.text and "127.0.0.1:9" in thread
    _mentions_escaped(bot.slack.calls)

    outputs = [json.dumps(bot.slack.calls), json.dumps(bot.slack.state())]
    db = sqlite3.connect(bot.settings.db)
    for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
        rows = db.execute(f"SELECT * FROM {table}").fetchall()  # noqa: S608 (table names)
        outputs.append(f"{table}: {json.dumps(rows, default=str)}")
    for fmt in ("md", "json", "csv", "postmortem"):
        done = await run_cli(bot.env, "export", "INC-1", "--format", fmt)
        if fmt != "postmortem" or done.returncode == 0:
            assert done.returncode == 0, done.stderr
        outputs += [done.stdout, done.stderr]
    resolved = await run_cli(bot.env, "resolve", "INC-1")
    outputs += [resolved.stdout, resolved.stderr]
    outputs += [record.getMessage() + (record.exc_text or "") for record in caplog.records]
    leaks = [text[max(0, text.find(CANARY) - 80):text.find(CANARY) + 40]
             for text in outputs if CANARY in text]
    assert not leaks, leaks


def _mentions_escaped(calls: list[tuple[str, dict]]) -> None:
    """`<!here>` from alert text never reaches a field Slack parses (text, mrkdwn); in a
    plain_text field Slack shows it as it is."""

    def walk(node: object, parsed: bool) -> None:
        if isinstance(node, dict):
            plain = node.get("type") == "plain_text"
            for key, value in node.items():
                walk(value, parsed=(key == "text" and not plain) or (parsed and key != "text"))
        elif isinstance(node, list):
            for item in node:
                walk(item, parsed)
        elif isinstance(node, str) and parsed:
            assert "<!here>" not in node, node

    for _, payload in calls:
        walk(payload, parsed=False)
