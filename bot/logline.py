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
