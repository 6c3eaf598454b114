"""Secrets out, size bounded: what reaches Slack, the store, the audit log and the console.

Every rule runs in time linear in the text, whatever the text is (a hostile log line must not
stall the bot): a rule either starts with a literal, or starts only where a run of its own
characters starts (a look-behind on the same class), and every open-ended scan is possessive or
bounded. `bench/bench_core.py` measures the worst inputs we know of.

Redact first, cut after: `bound` must only ever see redacted text, or a secret cut in half would
slip past the rules.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

MASK = "[REDACTED]"
OFF_LOOP = 64 * 1024  # characters above which `redact_async` runs in a worker thread


@dataclass(frozen=True)
class Rule:
    """A pattern whose `secret` group (the first of them that took part) is masked."""

    source: str
    secret: tuple[str | int, ...] = (0,)
    lower: bool = False  # searched in the lower-cased text (case-insensitive, still fast)
    mask: str = MASK
    needle: str = ""  # text without it cannot match: the rule is skipped (a fast substring test)
    flags: int = 0

    @functools.cached_property
    def pattern(self) -> re.Pattern[str]:
        """Compiled when a text first holds the needle: most texts hold none of them, and
        compiling every rule was 5 ms of each cold start (tests/unit/test_redact.py compiles
        them all)."""
        return re.compile(self.source, self.flags)


# a value: quoted (spaces allowed, backslash escapes kept whole; the quotes stay) or bare, 3+
_VALUE = (r"""(?:"(?P<dq>(?:[^"\\\n]|\\.){1,512})"|'(?P<sq>(?:[^'\\\n]|\\.){1,512})'"""
          r"""|(?P<bare>[^\s"',;&<>]{3,}+))""")
_VALUE_GROUPS = ("dq", "sq", "bare")
# Words that make a key name a secret's, each a literal the engine can search for fast (the
# `key` ones checked by a look-behind: api_key, access-key, private_key, ...)
_KEY_WORDS = ("passw", "passphrase", "secret", "token", "credential",
              "key" + "(?:" + "|".join(f"(?<={w}{sep}key)" for w in
                                      ("api", "access", "private", "auth", "session", "client")
                                      for sep in ("", "_", "-")) + ")")


def _key_rules() -> list[Rule]:
    rules = []
    for word in _KEY_WORDS:
        literal = re.match(r"[a-z]+", word)[0]  # type: ignore[index]
        # key = value, key: value, "key": "value", db_password=... (from the word on: the
        # rest of the key's name before it stays as it is); or a flag, --password X
        rules.append(Rule(
            rf"{word}(?:[\w.-]{{0,40}}+\"?[ \t]{{0,8}}+[:=][ \t]{{0,8}}+"
            rf"|(?<=-{literal})[\w-]{{0,40}}+[ \t]{{1,8}}+){_VALUE}",
            _VALUE_GROUPS, lower=True, needle=literal))
    return rules


# Patterns start with a literal (the engine then skips ahead fast); a look-behind after the
# literal keeps a match from starting inside a run of its own characters, so that no stretch of
# text is scanned from many starts. Every open-ended scan is possessive or bounded.
RULES: tuple[Rule, ...] = (
    Rule(r"-----BEGIN [A-Z ]{0,40}PRIVATE KEY-----.*?"
         r"(?:-----END [A-Z ]{0,40}PRIVATE KEY-----|\Z)", flags=re.S,
         mask=f"{MASK} private key", needle="-----BEGIN "),
    Rule(r"xox[abposr]-(?<![A-Za-z0-9-]xox[abposr]-)[A-Za-z0-9-]{8,}+", needle="xox"),
    Rule(r"xapp-(?<![A-Za-z0-9-]xapp-)[A-Za-z0-9-]{8,}+", needle="xapp-"),
    Rule(r"A(?:KIA|SIA)(?<![A-Za-z0-9]A[KS]IA)[A-Z0-9]{16}(?![A-Za-z0-9])", needle="IA"),
    Rule(r"gh[pousr]_(?<![A-Za-z0-9_]gh[pousr]_)[A-Za-z0-9]{30,}+", needle="gh"),
    Rule(r"eyJ(?<![A-Za-z0-9_-]eyJ)[A-Za-z0-9_-]{8,}+\.[A-Za-z0-9_-]{8,}+"
         r"\.[A-Za-z0-9_-]{8,}+", needle="eyJ"),  # JWT
    Rule(r"authorization[ \t]{0,8}+[:=][ \t]{0,8}+"
         r"(?:(?:bearer|basic|token|digest|negotiate)[ \t]{1,8}+)?(?P<v>[^\s'\"]++)",
         ("v",), lower=True, needle="authorization"),
    Rule(r"cookie[ \t]{0,8}+:[ \t]{0,8}+(?P<v>[^\r\n]++)", ("v",), lower=True,
         needle="cookie"),
    # scheme://user:password@host and scheme://:password@host
    Rule(r"://[^/\s:@]{0,256}+:(?P<v>[^@\s/]{1,512}+)@", ("v",), needle="://"),
    # mysql -pSECRET (a number after -p is a port or pid, and stays)
    Rule(r"-p(?<![\w-]-p)(?!\d+\b)(?P<v>[^\s\-]\S{0,511}+)", ("v",), needle="-p"),
    *_key_rules(),
)


def _lower(text: str) -> str:
    """Lower case, one character for one (U+0130 is the only one that lowers to two)."""
    return text.replace("\u0130", "i").lower() if "\u0130" in text else text.lower()


def redact(text: str) -> str:
    """Mask the secrets in `text`. Linear in its length."""
    low = ""
    spans: list[tuple[int, int, str]] = []
    for rule in RULES:
        if rule.lower and not low:
            low = _lower(text)
        subject = low if rule.lower else text
        if rule.needle and rule.needle not in subject:
            continue
        for m in rule.pattern.finditer(subject):
            for group in rule.secret:
                start, end = m.span(group)
                if start >= 0:
                    if end > start:
                        spans.append((start, end, rule.mask))
                    break
    if not spans:
        return text
    spans.sort()
    out, at = [], 0
    for start, end, mask in spans:
        if start < at:  # inside (or across the end of) a masked span: widen it
            at = max(at, end)
            continue
        out.append(text[at:start])
        out.append(mask)
        at = end
    out.append(text[at:])
    return "".join(out)


async def redact_async(text: str) -> str:
    """`redact`, in a worker thread when the text is large: the event loop keeps answering."""
    if len(text) <= OFF_LOOP:
        return redact(text)
    return await asyncio.to_thread(redact, text)


_PLAIN = frozenset({int, float, bool, type(None)})  # nothing in them to redact
SHORT = 200  # characters: a value this short is redacted once per text (`_redact_short`)


def redact_value(value: Any) -> Any:
    """Every string inside a JSON-like value, redacted (keys of mappings too)."""
    if type(value) in _PLAIN:  # before the Mapping check, an ABC's: slow for a number
        return value
    if isinstance(value, str):
        return _redact_short(value) if len(value) <= SHORT else redact(value)
    if isinstance(value, dict | Mapping):
        out = {}
        for k, v in value.items():
            key, secret = _key(str(k))
            out[key] = MASK if secret and isinstance(v, str) and v else redact_value(v)
        return out
    if isinstance(value, list | tuple):
        return [redact_value(v) for v in value]
    return value


_CLEAN: dict[str, str] = {}  # short texts read once and found without a secret
_CLEAN_MAX = 4096


def _remember(cache: dict[str, Any], text: str, value: Any) -> None:
    """`cache[text] = value`, the cache emptied first when it holds _CLEAN_MAX texts."""
    if len(cache) >= _CLEAN_MAX:
        cache.clear()
    cache[text] = value


def _redact_short(text: str) -> str:
    """`redact` of a short value, read once: every audit record repeats the same hosts, step
    ids, statuses and commands (a 50-host run writes about 150 records). Only a text with
    nothing to mask is remembered, so that no secret stays in memory in its raw form."""
    hit = _CLEAN.get(text)
    if hit is not None:
        return hit
    out = redact(text)
    if out == text:
        _remember(_CLEAN, text, out)
    return out


_SECRET_KEY = re.compile("|".join(_KEY_WORDS))
_KEYS: dict[str, bool] = {}  # keys read once and found without a secret: names a secret?


def _key(key: str) -> tuple[str, bool]:
    """A mapping's key, redacted, and whether it names a secret (its non-empty text value is
    then masked whole). Keys repeat in every record (step, host, run_id...): read once each;
    as with `_redact_short`, a key with something to mask is never remembered."""
    named = _KEYS.get(key)
    if named is not None:
        return key, named
    out, named = redact(key), _SECRET_KEY.search(key.lower()) is not None
    if out == key:
        _remember(_KEYS, key, named)
    return out, named


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def console_safe(text: str) -> str:
    """Text for a terminal: control characters (escape sequences, bidi overrides) shown as
    `\\xNN` instead of acted on; newlines and tabs stay."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m[0]):02x}" if ord(m[0]) < 0x100
                        else f"\\u{ord(m[0]):04x}", text)


def slack_escape(text: str) -> str:
    """Untrusted text for Slack's mrkdwn and `text`: `<!here>`, `<@U…>` and links become
    plain text (Slack's own escaping: &, < and >)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


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


def redact_logs() -> None:
    """Every log record redacted as it is made: its message, and a traceback's text (so no
    handler, whoever installed it, sees a secret)."""
    make = logging.getLogRecordFactory()
    if getattr(make, "redacting", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make(*args, **kwargs)
        try:
            record.msg, record.args = redact(record.getMessage()), None
        except (TypeError, ValueError):  # a malformed format string: keep what was logged
            record.msg = redact(str(record.msg))
        if record.exc_info:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return record

    factory.redacting = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)
