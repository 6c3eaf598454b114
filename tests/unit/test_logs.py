"""`--log-format json`: one JSON object a line, secrets redacted like every log line."""

from __future__ import annotations

import json
import logging

from bot.logs import JsonFormatter


def test_a_record_is_one_json_object_with_its_extra_fields() -> None:
    record = logging.LogRecord("opsbot.outbox", logging.WARNING, __file__, 1,
                               "INC-%d: %s not sent", (7, "root"), None)
    record.incident = "INC-7"
    line = JsonFormatter().format(record)
    assert "\n" not in line
    data = json.loads(line)
    assert data["level"] == "warning" and data["logger"] == "opsbot.outbox"
    assert data["message"] == "INC-7: root not sent" and data["incident"] == "INC-7"
    assert data["ts"].endswith("Z")


def test_json_lines_are_redacted() -> None:
    from bot import logs
    from bot.redact import redact

    logs.setup(fmt="json")
    handler = logging.getLogger().handlers[0]
    record = logging.getLogger("opsbot").makeRecord(
        "opsbot", logging.ERROR, __file__, 1, "login with password=%s failed", ("hunter2secret",),
        None)
    out = json.loads(handler.format(record))
    assert "hunter2secret" not in out["message"]
    assert out["message"] == redact("login with password=hunter2secret failed")
