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


def test_while_serving_a_blocked_log_writer_never_holds_the_caller() -> None:
    """`logs.off_thread` (around `opsbot serve`): a handler stuck in its write (a stderr pipe
    drained slowly) does not hold the thread that logs, i.e. the event loop; every line is
    written by the time it returns, its traceback still apart in the JSON."""
    import threading

    from bot import logs

    gate = threading.Event()
    lines: list[dict] = []

    class Stuck(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            gate.wait(10)
            lines.append(json.loads(JsonFormatter().format(record)))

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    root.handlers[:] = [Stuck()]
    root.setLevel(logging.INFO)
    try:
        with logs.off_thread():
            try:
                raise ValueError("boom")
            except ValueError:
                logging.getLogger("opsbot").exception("step %s failed", "x")
            assert not lines  # the caller went on while the writer waited
            gate.set()
        assert [line["message"] for line in lines] == ["step x failed"]
        assert "ValueError: boom" in lines[0]["exception"]
        assert root.handlers[0].__class__ is Stuck  # as it was before serving
    finally:
        gate.set()
        root.handlers[:], level = saved
        root.setLevel(level)
