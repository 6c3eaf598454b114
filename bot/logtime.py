"""When was a log line written? The timestamp at its start, in the formats of the logs opsbot reads.

    nginx error log, Go's log      2026/11/22 03:04:34 [error] ...
    supervisord, Python logging    2026-11-22 03:04:34,123 INFO exited: ...
    Docker logs --timestamps       2026-11-22T03:04:34.123456789Z ...
    journal -o short-iso           2026-11-22T03:04:34+0000 host unit[1]: ...
    journal -o short, syslog       Nov 22 03:04:34 host unit[1]: ...       (year from the incident)
    dmesg -T, uwsgi, Apache        [Sun Nov 22 03:04:34 2026] ...
    dmesg                          [ 1234.567890] ...                     (needs the boot time)
    log4js (OnlyOffice), gunicorn  [2026-11-22T03:04:34.565] / [2026-11-22 03:04:34 +0000]
    php-fpm                        [22-Nov-2026 03:04:34] WARNING: ...
    Redis                          1:M 22 Nov 2026 03:04:34.123 # ...

A `docker compose logs` prefix (`web-1  | `) is skipped. Times without a zone are the host's local
time: naive datetimes here; `Clock` says how to compare them with the incident's start.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

MONTHS = {m: i for i, m in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1)}
_MON = r"(?i:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)"
_DAY = r"(?i:mon|tue|wed|thu|fri|sat|sun)"
_HMS = r"(\d{2}):(\d{2}):(\d{2})(?:[.,](\d{1,9}))?"
_PREFIX = r"^(?:[\w.-]+\s+\|\s)?\[?\s*"  # compose's "service-1  | ", an opening bracket


@functools.cache
def _formats() -> tuple[re.Pattern[str], ...]:
    """ISO, CTIME, PHP, REDIS, SYSLOG, UPTIME: compiled when a first line is read (diagnosis
    with rules): a cold run that reads none does not pay for them."""
    return (
        re.compile(_PREFIX + r"(\d{4})[-/](\d{2})[-/](\d{2})[T ]" + _HMS
                   + r"\s?(Z|[+-]\d{2}:?\d{2}|UTC|GMT)?(?![\d:])"),
        re.compile(_PREFIX + _DAY + r" (" + _MON + r")\s+(\d{1,2}) " + _HMS + r" (\d{4})\b"),
        re.compile(_PREFIX + r"(\d{2})-(" + _MON + r")-(\d{4}) " + _HMS + r"\]"),
        re.compile(r"^\d+:[MCXS] (\d{1,2}) (" + _MON + r") (\d{4}) " + _HMS + r"\s"),
        re.compile(_PREFIX + r"(" + _MON + r")\s+(\d{1,2}) " + _HMS + r"\s"),
        re.compile(r"^\[\s*(\d{1,9}\.\d{3,9})\]"))

# the widest gap between a host's local time and UTC (UTC-12 .. UTC+14)
ZONE_SLACK = timedelta(hours=14)


@dataclass(frozen=True)
class Clock:
    """How to tell log lines of the incident from older ones.

    since: when the incident started (the alert's startsAt); aware, or naive in the host's time.
    margin: lines this much older than `since` still count as the incident's.
    utc_offset: the host's offset from UTC (`date +%z`), for log times without a zone; unknown,
        such times are compared with an aware `since` as if they could be of any zone.
    booted_at: when the host booted, to place dmesg's seconds since boot.
    """

    since: datetime
    margin: timedelta = timedelta(minutes=5)
    utc_offset: timedelta | None = None
    booted_at: datetime | None = None

    def is_earlier(self, when: datetime) -> bool:
        """True when a line written at `when` is surely older than the incident (minus margin)."""
        cutoff = self.since - self.margin
        if (when.tzinfo is None) == (cutoff.tzinfo is None):
            return when < cutoff
        if self.utc_offset is not None:
            zone = timezone(self.utc_offset)
            when, cutoff = (w.replace(tzinfo=zone) if w.tzinfo is None else w
                            for w in (when, cutoff))
            return when < cutoff
        if when.tzinfo is None:  # local time of an unknown zone against an aware start
            return when.replace(tzinfo=UTC) + ZONE_SLACK < cutoff
        return when < cutoff.replace(tzinfo=UTC) - ZONE_SLACK


def line_time(line: str, clock: Clock | None = None) -> datetime | None:
    """The time a log line starts with, or None. Never raises."""
    try:
        return _parse(line, clock)
    except (ValueError, OverflowError):  # 2026-02-31, a year out of range: not a time
        return None


def _parse(line: str, clock: Clock | None) -> datetime | None:
    iso, ctime, php, redis, syslog, uptime = _formats()
    if m := iso.match(line):
        y, mo, d, hh, mm, ss, frac, zone = m.groups()
        when = datetime(int(y), int(mo), int(d), int(hh), int(mm), int(ss), _micro(frac))
        return _zoned(when, zone)
    if m := ctime.match(line):
        mon, d, hh, mm, ss, frac, y = m.groups()
        return datetime(int(y), MONTHS[mon.lower()], int(d), int(hh), int(mm), int(ss),
                        _micro(frac))
    if m := php.match(line):
        d, mon, y, hh, mm, ss, frac = m.groups()
        return datetime(int(y), MONTHS[mon.lower()], int(d), int(hh), int(mm), int(ss),
                        _micro(frac))
    if m := redis.match(line):
        d, mon, y, hh, mm, ss, frac = m.groups()
        return datetime(int(y), MONTHS[mon.lower()], int(d), int(hh), int(mm), int(ss),
                        _micro(frac))
    if m := syslog.match(line):
        if clock is None:  # no year in the line, and nothing to take it from
            return None
        mon, d, hh, mm, ss, frac = m.groups()
        year = clock.since.year
        when = datetime(year, MONTHS[mon.lower()], int(d), int(hh), int(mm), int(ss),
                        _micro(frac))
        if when - clock.since.replace(tzinfo=None) > timedelta(days=2):
            when = when.replace(year=year - 1)  # December's lines read in January
        return when
    if (m := uptime.match(line)) and clock is not None and clock.booted_at is not None:
        return clock.booted_at + timedelta(seconds=float(m.group(1)))
    return None


def _micro(frac: str | None) -> int:
    return int((frac or "0")[:6].ljust(6, "0"))


def _zoned(when: datetime, zone: str | None) -> datetime:
    if zone is None:
        return when
    if zone in ("Z", "UTC", "GMT"):
        return when.replace(tzinfo=UTC)
    sign = -1 if zone[0] == "-" else 1
    digits = zone[1:].replace(":", "")
    offset = timedelta(hours=int(digits[:2]), minutes=int(digits[2:]))
    return when.replace(tzinfo=timezone(sign * offset))
