"""A log line as a reader sees it: without the terminal codes (colours, cursor moves) that a
program writes when it thinks it talks to a terminal (a container run with a TTY, .NET's console
logger, zerolog's and pino-pretty's console output). Rules match the plain line; a quote is the
line as it was printed."""

from __future__ import annotations

import re

# CSI sequences (ESC [ ... final byte), OSC strings (ESC ] ... BEL or ESC \), and the
# two-character escapes (ESC followed by one of @-Z \ ] ^ _)
ANSI = re.compile(r"\x1b(?:\[[0-9;?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\-_])")


def plain(line: str) -> str:
    """The line without its terminal codes."""
    return ANSI.sub("", line) if "\x1b" in line else line


# Where a log message starts in a line: at the line's start, or after the envelope a log
# collector put before it, so that a rule anchored on a message's start reads it whatever
# deployment collected it. A rules pattern writes it `{^}` (bot/diagnosis.py puts this in its
# place). The envelopes, as these programs print them (tests/unit/test_logline.py):
#   "| "        docker compose (`web-1  | `, v1 `web_1  | `), forego and honcho (`nginx.1 | `);
#   "] "        kubectl logs --prefix (`[pod/web-0/app] `), a bracketed time or level;
#   "]: "       journald and syslog with a pid (`Jan 23 11:31:15 host prog[123]: `), Heroku
#               (`2010-09-16T15:13:46.677020+00:00 app[web.1]: `);
#   "TIME HOST TAG: "  syslog without a pid (`Jan 23 11:31:15 host kernel: `);
#   a time of day and blanks: docker and kubectl logs --timestamps (`...T01:12:56.336189845Z `),
#               s6-log's T (`2026-12-01 01:12:54.980930351  `, two blanks), supervisord's own
#               log (`2026-12-01 01:13:04,867 `), a time with its UTC offset; and the CRI log
#               file's stream and tag after it (`2019-04-30T02:12:41.8443515Z stdout F `);
#   "@TAI64N "  s6-log's t (`@400000006b0e1f3c0140228f `).
# A colon within a message (`connection error: Error: ...`) is not an envelope's end.
MESSAGE_START_TOKEN = "{^}"
# (each branch opens with a literal where it can: sre skips those at a glance, and the rules
# search with this ~40 patterns)
MESSAGE_START = (
    r"(?:^|\|\s|\]\s|\]:\s"
    r"|\d\d:\d\d:\d\d(?: \S+ [\w./-]+:\s"
    r"|(?:[.,]\d+)?(?:Z|[+-]\d\d:?\d\d)?\s+(?:std(?:out|err) [FP] )?)"
    r"|@4000000[0-9a-f]+\s)")
