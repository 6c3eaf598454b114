"""Logging set-up: readable lines, or one JSON object a line (`--log-format json`) for log
shippers. Extra fields given with `extra={...}` are kept in the JSON."""

from __future__ import annotations

import json
import logging
import queue
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
               .replace("+00:00", "Z"),
               "level": record.levelname.lower(), "logger": record.name,
               "message": record.getMessage()}
        out.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_text:  # set (and redacted) by bot.redact.redact_logs
            out["exception"] = record.exc_text
        elif record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


CHOSEN = {"verbose": False, "fmt": "text"}  # what `setup` was last asked for (the edge process's)


def setup(*, verbose: bool = False, fmt: str = "text") -> None:
    from bot.redact import redact_logs

    CHOSEN.update(verbose=verbose, fmt=fmt)

    redact_logs()  # no secret reaches a log line
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    if not verbose:
        for noisy in ("asyncssh", "slack_bolt", "slack_sdk", "aiohttp.access"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


@contextmanager
def off_thread() -> Iterator[None]:
    """While serving: the root logger's handlers write on a thread of their own, so that a log
    line never holds the event loop (a write to a stderr pipe that its reader drains slowly
    blocks the writer). Every record queued is written before this returns."""
    from logging.handlers import QueueHandler, QueueListener  # serving only (pickle, socket...)

    class Handoff(QueueHandler):
        """Hands a record to the writing thread as it is: `redact_logs`'s record factory
        already made its message and traceback text (QueueHandler would fold the traceback into
        the message, and the JSON format keeps it apart)."""

        def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
            return record

    root = logging.getLogger()
    handlers = root.handlers[:]
    records: queue.SimpleQueue[logging.LogRecord | None] = queue.SimpleQueue()
    listener = QueueListener(records, *handlers, respect_handler_level=True)
    listener.start()
    root.handlers[:] = [Handoff(records)]
    try:
        yield
    finally:
        root.handlers[:] = handlers
        listener.stop()  # writes what is queued, then ends the thread
