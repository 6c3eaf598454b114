"""Secrets out, size bounded: what reaches Slack, the store and the audit log."""

from __future__ import annotations

import re

MASK = "[REDACTED]"

# (pattern, replacement). Keep a key's name so the line still reads; mask only the secret.
RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(-----END [A-Z ]*PRIVATE KEY-----|\Z)",
                re.S), f"{MASK} private key"),
    (re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{8,}"), MASK),
    (re.compile(r"\bxapp-[A-Za-z0-9-]{8,}"), MASK),
    (re.compile(r"\b(AKIA|ASIA)[A-Z0-9]{16}\b"), MASK),
    (re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,}\b"), MASK),
    (re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"), MASK),  # JWT
    (re.compile(r"(?i)(authorization\s*[:=]\s*(?:bearer|basic|token)\s+)[^\s'\"]+"), rf"\1{MASK}"),
    (re.compile(r"(?i)(\b[\w.-]*(?:password|passwd|secret|token|api[_-]?key|access[_-]?key)"
                r"[\w.-]*\"?\s*[:=]\s*\"?)([^\s\"',;&]{3,})"), rf"\1{MASK}"),
    (re.compile(r"(?i)(://[^/\s:@]+:)[^@\s/]+@"), rf"\1{MASK}@"),  # scheme://user:pass@host
)


def redact(text: str) -> str:
    for pattern, replacement in RULES:
        text = pattern.sub(replacement, text)
    return text


def bound(text: str, limit: int, *, keep_head: float = 0.4) -> tuple[str, bool]:
    """Keep the head and the tail of `text` within `limit` characters, saying what was cut."""
    if len(text) <= limit:
        return text, False
    head_len = int(limit * keep_head)
    tail_len = max(limit - head_len - 60, 0)
    head = text[:head_len]
    tail = text[len(text) - tail_len:] if tail_len else ""
    # cut on line boundaries where that loses little
    if "\n" in head[head_len // 2:]:
        head = head[: head.rindex("\n") + 1]
    if "\n" in tail[: tail_len // 2]:
        tail = tail[tail.index("\n") + 1:]
    cut = len(text) - len(head) - len(tail)
    return f"{head}… [{cut} characters cut] …\n{tail}", True
