"""`timeline INC-n postmortem` in Slack: the draft and its timeline chart (a PNG) are uploaded
into the incident's thread through the outbox, once each, even when Slack's answers to the
uploads are lost and the outbox tries again."""

from __future__ import annotations

import json

from tests.botfixtures import CHANNEL, RunningBot, alert_payload

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


async def test_the_postmortem_and_its_chart_are_uploaded_into_the_thread_once(
        light_bot: RunningBot) -> None:
    bot = light_bot
    code, _ = await bot.post_alert(alert_payload(name="DiskFull", host="nowhere"))
    assert code == 200
    root = await bot.wait(lambda: next(iter(bot.roots()), None))
    await bot.wait(lambda: "Nothing for opsbot to run" in bot.thread_text(root))
    # both uploads reach Slack, but the connection drops before Slack's answer
    bot.slack.lose_answers("files.completeUploadExternal", 2)
    status, text = await bot.slash("timeline INC-1 postmortem", user="U0ALICE")
    assert status == 200 and "Exporting INC-1 as postmortem" in json.loads(text)["text"]

    def uploaded() -> list:
        store = bot.store()
        try:
            left = store.db.execute("SELECT count(*) FROM outbox WHERE status = 'pending'"
                                    ).fetchone()[0]
        finally:
            store.close()
        names = sorted(f.name for f in bot.slack.files if f.uploaded)
        return names if not left and len(names) >= 2 else []

    names = await bot.wait(uploaded, timeout=60)
    assert names == ["INC-1-postmortem.md", "INC-1-timeline.png"]  # each once
    chart = next(f for f in bot.slack.files if f.name == "INC-1-timeline.png")
    assert chart.content.startswith(PNG_SIGNATURE) and len(chart.content) > 1000
    assert chart.title == "INC-1 timeline chart"
    assert chart.shares == [{"channel": CHANNEL, "ts": chart.shares[0]["ts"],
                             "thread_ts": root.ts}]
    draft = next(f for f in bot.slack.files if f.name == "INC-1-postmortem.md")
    assert "mermaid" in draft.text and draft.shares[0]["thread_ts"] == root.ts
    calls = [m for m, _ in bot.slack.calls if m == "files.completeUploadExternal"]
    assert len(calls) == 2  # the retries found the files in the thread: not uploaded again
    store = bot.store()
    try:
        audited = [json.loads(r["detail"]) for r in store.audit_records()
                   if r["action"] == "file.uploaded"]
        retried = store.db.execute("SELECT count(*) FROM outbox WHERE kind = 'upload' AND "
                                   "maybe_sent = 1").fetchone()[0]
    finally:
        store.close()
    assert [a["filename"] for a in audited] == ["INC-1-postmortem.md", "INC-1-timeline.png"]
    assert audited[1]["bytes"] == len(chart.content)
    assert retried == 2
