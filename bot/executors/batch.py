"""Several shell commands in one session: the script, and its output told apart per command.

Each command runs in a subshell of its own (`( eval 'command' ) </dev/null`: a syntax error, an
`exit` or an `exec` ends only that command), then the script prints a marker line with the
command's exit status: a newline, a random marker and the status. The marker never appears whole
in the script (so not in `ps` output either) and is not exported, so no command and no host can
print it to end a command's output early or forge its status.

With `ack`, the script first prints a marker line of its own (status 0) before any command
runs: a shell session kept open between batches (bot.executors.ssh) thus says it took the
script, as a new session's open confirmation does.
"""

from __future__ import annotations

import secrets
import shlex
from collections.abc import Sequence

Piece = bytes | int | None  # output of the current command | its exit status (None: unreadable)


class Batch:
    def __init__(self, commands: Sequence[str], *, ack: bool = False) -> None:
        marker = secrets.token_hex(16)
        self.sep = f"\n{marker} ".encode()
        self.ack = ack
        half = len(marker) // 2
        lines = [f'M={marker[:half]}""{marker[half:]}']
        if ack:
            lines.append("printf '\\n%s 0\\n' \"$M\"")
        lines += [f"( eval {shlex.quote(c)} ) </dev/null; printf '\\n%s %s\\n' \"$M\" \"$?\""
                  for c in commands]
        self.script = "\n".join(lines) + "\n"
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Piece]:
        """What `data` adds: output bytes of the current command, and an int (its exit
        status) where it ended. Bytes that may begin a marker are held until they can tell."""
        self._buf += data
        out: list[Piece] = []
        while True:
            pos = self._buf.find(self.sep)
            if pos < 0:  # hold back only a tail that may be the start of a marker
                hold = self._buf.find(b"\n", max(0, len(self._buf) - len(self.sep) + 1))
                while hold >= 0 and not self.sep.startswith(self._buf[hold:]):
                    hold = self._buf.find(b"\n", hold + 1)
                cut = len(self._buf) if hold < 0 else hold
                if cut:
                    out.append(bytes(self._buf[:cut]))
                    del self._buf[:cut]
                return out
            end = self._buf.find(b"\n", pos + len(self.sep))
            if pos:
                out.append(bytes(self._buf[:pos]))
                del self._buf[:pos]
            if end < 0:  # the status line is not whole yet
                return out
            status = bytes(self._buf[len(self.sep):end - pos])
            out.append(int(status) if status.isdigit() and len(status) < 4 else None)
            del self._buf[:end - pos + 1]

    def rest(self) -> bytes:
        """What is held back, at the end of the session."""
        rest, self._buf = bytes(self._buf), bytearray()
        return rest
