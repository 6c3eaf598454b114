"""OpenSSH known_hosts, read strictly: which host keys a host may present.

For the libssh2 client (bot.executors.libssh2); asyncssh reads the file itself, and a host is
matched as asyncssh matches it: by its name or IP address, on a port other than 22 as
`[host]:port`, or where no line names that, as the host itself; patterns may be hashed
(`|1|salt|hash`), hold `*` and `?`, and be negated with `!`. A key listed `@revoked` is refused
for every host.
`@cert-authority` lines are not supported: they trust no key here (a host known only through
a CA is refused). A line that cannot be read makes the whole file unusable: nothing is
verified against it, as with asyncssh.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bot.errors import BotError


class KnownHostsUnreadable(BotError):
    """The known_hosts file is missing or has a line that cannot be read."""


@dataclass(frozen=True)
class _Line:
    patterns: tuple[str, ...]
    algorithm: str
    blob: bytes
    marker: str | None  # None, "revoked" or "cert-authority"


@dataclass(frozen=True)
class Trusted:
    """The keys a host may present: their algorithms (in file order) and blobs."""

    keys: tuple[tuple[str, bytes], ...]
    revoked: frozenset[bytes]

    def allows(self, blob: bytes) -> bool:
        return blob not in self.revoked and any(b == blob for _, b in self.keys)

    @property
    def algorithms(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(a for a, _ in self.keys))


def _matcher(pattern: str) -> Callable[[str], bool]:
    """Whether a name matches one pattern (without its `!`): hashed, wildcard or plain."""
    if pattern.startswith("|1|"):
        try:
            _, _, salt_text, digest_text = pattern.split("|")
            salt, digest = base64.b64decode(salt_text), base64.b64decode(digest_text)
        except (ValueError, binascii.Error):
            return lambda name: False
        return lambda name: hmac.compare_digest(
            hmac.new(salt, name.encode(), hashlib.sha1).digest(), digest)
    if "*" in pattern or "?" in pattern:
        regex = re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c)
                                   for c in pattern))
        return lambda name: regex.fullmatch(name) is not None
    return pattern.__eq__


def _matches(patterns: tuple[str, ...], names: tuple[str, ...]) -> bool:
    hit = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        match = _matcher(pattern[1:] if negated else pattern)
        if any(match(n) for n in names):
            if negated:
                return False
            hit = True
    return hit


def _plain(pattern: str) -> bool:
    return not any(c in pattern for c in "*?!|")


class KnownHosts:
    def __init__(self, lines: list[_Line]) -> None:
        self._lines = lines
        # lines whose names are all plain, by name: a host's lines are found without
        # matching every line of a long file (once per host of a 50-host run)
        self._by_name: dict[str, list[int]] = {}
        self._others: list[int] = []  # hashed, wildcard or negated names: matched one by one
        for n, line in enumerate(lines):
            if line.marker is None and all(_plain(p) for p in line.patterns):
                for pattern in line.patterns:
                    self._by_name.setdefault(pattern, []).append(n)
            elif line.marker is None:
                self._others.append(n)
        self._revoked = frozenset(line.blob for line in lines if line.marker == "revoked")

    @classmethod
    def read(cls, path: Path) -> KnownHosts:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise KnownHostsUnreadable(f"known_hosts file {path}: {exc}") from None
        lines: list[_Line] = []
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            fields = line.split()
            marker = None
            if fields[0].startswith("@"):
                marker = fields.pop(0)[1:]
                if marker not in ("revoked", "cert-authority"):
                    raise KnownHostsUnreadable(
                        f"known_hosts file {path}, line {number}: unknown marker @{marker}")
            try:
                blob = base64.b64decode(fields[2], validate=True)
            except (IndexError, binascii.Error):
                raise KnownHostsUnreadable(
                    f"known_hosts file {path}, line {number}: not 'hosts key-type key'") from None
            lines.append(_Line(tuple(fields[0].split(",")), fields[1], blob, marker))
        return cls(lines)

    def trusted(self, host: str, port: int, address: str | None = None) -> Trusted:
        """The keys of `host` (or of its IP `address`) on `port`: those listed for
        `[host]:port`, or where none is, those listed for the host itself (as asyncssh)."""
        names = tuple(dict.fromkeys(x for x in (host, address) if x))
        found = self._trusted(tuple(f"[{n}]:{port}" for n in names)) if port != 22 else None
        return found if found is not None and found.keys else self._trusted(names)

    def _trusted(self, names: tuple[str, ...]) -> Trusted:
        found = {n for name in names for n in self._by_name.get(name, ())}
        found.update(n for n in self._others if _matches(self._lines[n].patterns, names))
        keys = tuple((self._lines[n].algorithm, self._lines[n].blob) for n in sorted(found))
        return Trusted(keys, self._revoked)  # a revoked key is refused for every host
